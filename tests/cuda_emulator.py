"""What each kernel of ``cuda/`` computes (their header comments), in torch, with the argument order of their
signatures: stands in for ``cupy_backend.launch`` where there is no GPU, so that the cupy backend's own code
(argument order, grids, multipliers, in-place outputs) runs through the seam's tests everywhere; the kernels
themselves are checked against torch on a GPU (test_cuda.py)."""
import functools

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from onmt_structdrop import ops
from onmt_structdrop.ops import cuda_graphs, cupy_backend


def _covers(grid, block, rows, cols):
    assert grid[0] * block[0] >= cols and grid[1] * block[1] >= rows, (grid, block, rows, cols)


def _scaled(a, keep, mult):
    a_k = a[:, keep]
    return a_k * mult if mult is not None else a_k


def launch(module_name, function, grid, block, device, *args):
    if _Recorder.active is not None:  # in a capture: recorded as one launch, its host values frozen
        return _Recorder.active.launch(module_name, function, grid, block, device, *args)
    assert all(a.device == device for a in args if torch.is_tensor(a))
    if function == "gather_k_matmul":
        a, wt, keep, mult, out, M, n, n_out, k, alpha, beta = args
        _covers(grid, block, M, n_out)
        assert a.shape == (M, n) and wt.shape == (n, n_out) and keep.shape == (k,) and out.is_contiguous()
        out.copy_((out * float(beta) if beta != 0 else 0) + float(alpha) * _scaled(a, keep, mult) @ wt[keep])
    elif function == "gather_k_matmul_steps":
        a, wt, keep, values, step_set, bias, out, M, n, n_out, k, alpha = args
        T = a.shape[0]
        assert grid[2] == T and a.shape == (T, M, n) and keep.shape[1] == k and out.is_contiguous()
        _covers(grid, block, M, n_out)
        for t in range(T):
            s = int(step_set[t])
            mult = values[s] if values is not None else None
            out[t] = (bias if bias is not None else 0) + float(alpha) * _scaled(a[t], keep[s], mult) @ wt[keep[s]]
    elif function == "scatter_k_matmul_t_steps":
        dout, wt, keep, values, step_set, da, M, n, n_out, k, alpha = args
        T = dout.shape[0]
        assert grid[2] == T and dout.shape == (T, M, n_out) and da.shape == (T, M, n) and da.is_contiguous()
        _covers(grid, block, M, k)
        for t in range(T):
            s = int(step_set[t])
            da_k = float(alpha) * (dout[t] @ wt[keep[s]].t())
            da[t][:, keep[s]] = da_k * values[s] if values is not None else da_k
    elif function == "scatter_k_matmul_t":
        dout, wt, keep, mult, da, M, n, n_out, k, alpha = args
        _covers(grid, block, M, k)
        assert dout.shape == (M, n_out) and da.shape == (M, n) and da.is_contiguous()
        da_k = float(alpha) * (dout @ wt[keep].t())
        da[:, keep] = da_k * mult if mult is not None else da_k
    elif function == "accumulate_k_weight":
        a, dout, keep, mult, dwt, M, n, n_out, k, alpha = args
        _covers(grid, block, k, n_out)
        assert dwt.shape == (n, n_out) and dwt.is_contiguous()
        dwt[keep] += float(alpha) * _scaled(a, keep, mult).t() @ dout
    elif function == "lstm_pointwise_forward":
        gates, c_prev, c, tanh_c, h, B, H = args
        assert grid[0] * block[0] >= B * H and gates.shape == (B, 4 * H) and gates.is_contiguous()
        i, f, g, o = gates.chunk(4, 1)
        gates.copy_(torch.cat([i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()], 1))
        i, f, g, o = gates.chunk(4, 1)
        c.copy_(f * c_prev + i * g)
        tanh_c.copy_(c.tanh())
        h.copy_(o * tanh_c)
    elif function == "lstm_pointwise_backward":
        act, c_prev, tanh_c, dh, dc, dgates, dc_prev, B, H = args
        assert grid[0] * block[0] >= B * H and dgates.is_contiguous()
        i, f, g, o = act.chunk(4, 1)
        dh = dh if dh is not None else torch.zeros_like(c_prev)
        dc_total = (dc if dc is not None else 0) + dh * o * (1 - tanh_c * tanh_c)
        dgates.copy_(torch.cat([dc_total * g * i * (1 - i), dc_total * c_prev * f * (1 - f),
                                dc_total * i * (1 - g * g), dh * tanh_c * o * (1 - o)], 1))
        dc_prev.copy_(dc_total * f)
    else:
        raise AssertionError(f"no kernel {function} in {module_name}")
    assert function in cupy_backend.KERNELS[module_name]


class _Recorder(TorchDispatchMode):
    """Records the operations of a capture as a CUDA graph does: each torch operation and kernel launch with its
    arguments as they were then (host values frozen, tensors by identity). Reading a device value on the host
    (``.item()``, ``int()``, ``.tolist()``) fails, as it does in a real capture."""

    active = None

    def __init__(self):
        super().__init__()
        self.calls = []

    def __enter__(self):
        _Recorder.active = self
        return super().__enter__()

    def __exit__(self, *exc):
        _Recorder.active = None
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a capture read a device value on the host, which a CUDA graph cannot replay")
        out = func(*args, **(kwargs or {}))
        self.calls.append((func, args, kwargs or {}, out))
        return out

    def launch(self, *args):
        _Recorder.active = None  # the kernel's own work (in torch here) is one launch, not a list of operations
        try:
            with torch.utils._python_dispatch._disable_current_modes():
                launch(*args)
        finally:
            _Recorder.active = self
        self.calls.append((launch, args, {}, None))


class RecordedGraph:
    """What a CUDA graph replays, without CUDA: the capture's operations and launches (:class:`_Recorder`) run
    again in order on whatever their tensors hold now, each result written into the tensor the capture produced
    (a graph's memory pool gives its outputs the same addresses). A host value read while capturing (a sizes
    tuple, a Python scalar) stays what it was then, so a capture that bakes in a value of one call shows as wrong
    results at the next."""

    def capture(self, fn):
        with _Recorder() as recorder:
            outputs = fn()
        self.calls = recorder.calls
        return outputs

    def replay(self):
        for func, args, kwargs, out in self.calls:
            new = func(*args, **kwargs)
            if func is launch:
                continue
            returns = func._schema.returns
            for captured, fresh, ret in zip(out if isinstance(out, (tuple, list)) else (out,),
                                            new if isinstance(new, (tuple, list)) else (new,), returns):
                if torch.is_tensor(captured) and ret.alias_info is None:  # a fresh tensor, not a view or in place
                    captured.copy_(fresh)


def emulate(monkeypatch):
    """Let the cupy backend serve CPU tensors, its launches computed by :func:`launch` and its layers' graphs
    recorded and replayed as CUDA graphs are (:class:`RecordedGraph`; for the test that asks: ``monkeypatch``
    undoes it, a fresh availability cache included)."""
    monkeypatch.setattr(ops, "availability", functools.lru_cache(maxsize=None)(ops.availability.__wrapped__))
    monkeypatch.setattr(cupy_backend, "available", lambda: (True, ""))
    monkeypatch.setattr(cupy_backend, "declines", lambda op, device, dtype, plan=None: cupy_backend.plan_declines(
        op, plan))
    monkeypatch.setattr(cupy_backend, "launch", launch)
    monkeypatch.setattr(cupy_backend, "GRAPHS", cuda_graphs.GraphCache(RecordedGraph))


def graphed_and_eager_runs(model, make_input, monkeypatch, steps=3, seed=7):
    """Outputs and gradients of ``steps`` training steps of ``model`` with the layers' CUDA graphs on, then off,
    from the same seed (the same masks and inputs each time): ``{"1": runs, "0": runs}``."""
    results = {}
    for graphs in ("1", "0"):
        monkeypatch.setenv(cuda_graphs.ENV, graphs)
        torch.manual_seed(seed)
        runs = []
        for _ in range(steps):
            x = make_input().requires_grad_()
            model.zero_grad()
            y, (h, c) = model(x)
            (y.sin().sum() + h.sum() + c.cos().sum()).backward()
            runs.append([y, h, c, x.grad] + [p.grad.clone() for p in model.parameters()])
        results[graphs] = runs
    return results
