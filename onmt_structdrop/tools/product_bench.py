"""The three kept products of each backend against the dense product of the same shape:
``python -m onmt_structdrop.tools.product_bench --help``.

For ``a`` (M x n) and a weight ``wt`` (n x N) with k = (1 - p) n kept units: the forward product
``a[:, K] @ wt[K]``, the input gradient ``dout @ wt[K]^T`` and the weight gradient into the kept rows
``a[:, K]^T @ dout``, each timed against the dense torch product of the full shape (MKL on CPU, cuBLAS on GPU)
that computes what the kept one does on every unit: the forward and the weight gradient add into their output
(a step's gates, the gradient summed over a sequence's steps), so their dense products add too (``addmm_``); the
dense product into a fresh output (``mm``) is timed beside them ("fresh"). The ideal is (1 - p) of the dense
time; "of ideal" is the ideal time over the measured one (1.0: the whole saving is reached). Each backend's kept
products are the seam's step primitives (what a step-by-step loop runs), the gather of the input's kept columns
and the preparation of the kept weight rows (a gather, for the torch backend; none for the native engine, whose
kernels read them in place, or from 128 rows copy them for an MKL product) included. Variants run round-robin in
one process; medians.
"""
from __future__ import annotations

import argparse
import json

import torch

from .. import ops
from ..masks import check_rate, kept_count
from ..textfile import write_text
from ..measuring import device_name, time_callables

PRODUCTS = ("forward", "input gradient", "weight gradient")


def products(M, n, N, p, generator, backend, device=torch.device("cpu")):
    """``{name: (dense callable, kept callable, dense callable into a fresh output)}`` for one shape and rate, the
    kept ones through backend ``backend``'s step primitives."""
    k = kept_count(p, n)
    keep = torch.randperm(n, generator=generator)[:k].contiguous().to(device)
    a, wt = (torch.randn(*shape, generator=generator).to(device) for shape in ((M, n), (n, N)))
    dout = torch.randn(M, N, generator=generator).to(device)
    out, dwt = torch.zeros(M, N, device=device), torch.zeros(n, N, device=device)
    out_dense, dwt_dense = out.clone(), dwt.clone()
    dense = (lambda: out_dense.addmm_(a, wt), lambda: torch.mm(dout, wt.t()), lambda: dwt_dense.addmm_(a.t(), dout))
    fresh = (lambda: torch.mm(a, wt), None, lambda: torch.mm(a.t(), dout))
    b, da = ops.get(backend), torch.empty(M, n, device=device)
    kept = (lambda: b.kept_product(out, a, keep, 1.0, b.kept_rows(wt, keep)),
            lambda: b.kept_input_grad(da, dout, keep, 1.0, b.kept_rows(wt, keep)),
            lambda: b.add_kept_rows_grad(dwt, a, dout, keep, 1.0))
    return dict(zip(PRODUCTS, zip(dense, kept, fresh)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20, 700], help="M: a step's batch, a sequence's")
    parser.add_argument("--inputs", type=int, default=650, help="n")
    parser.add_argument("--outputs", type=int, default=2600, help="N (4 x hidden for an LSTM's gates)")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", nargs="+", choices=ops.BACKENDS, default=None,
                        help="default: the first that serves the device (the native engine on a CPU where it is "
                             "built), every one that serves on a GPU")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    for rate in args.rates:
        check_rate(rate, "--rates")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    serving = ops.serving(device)
    backends = [name for name in args.backends if name in serving] if args.backends else (
        serving[:1] if device.type == "cpu" else serving)
    if not backends:
        parser.error(f"none of {', '.join(args.backends)} serves float32 products on {device} "
                     f"(python -m onmt_structdrop.tools.bench --help lists why a backend is unavailable)")
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    about = "; ".join(f"{name}: {ops.get(name).details()}" for name in backends if ops.get(name).details())
    print(f"device: {device_name(device)}; backends: {', '.join(backends)}{f' ({about})' if about else ''}; "
          f"torch {torch.__version__}; median of {args.repeats}")
    print(f"{'product':<16} {'backend':<7} {'M':>4} {'n -> N':>11} {'p':>4}  {'dense ms':>8}  {'kept ms':>8}  "
          f"{'of ideal':>8}  {'fresh ms':>8}  {'of ideal':>8}")
    rows = []
    for M in args.rows:
        for p in args.rates:
            runs = {backend: products(M, args.inputs, args.outputs, p, generator, backend, device)
                    for backend in backends}
            timed = time_callables({f"{name} {backend} {which}": fn for backend, variants in runs.items()
                                    for name, fns in variants.items()
                                    for which, fn in zip(("dense", "kept", "fresh"), fns) if fn is not None},
                                   args.repeats, 3, device)[0]
            for backend in backends:
                for name in PRODUCTS:
                    dense, kept = timed[f"{name} {backend} dense"], timed[f"{name} {backend} kept"]
                    fresh = timed.get(f"{name} {backend} fresh", dense)
                    k = kept_count(p, args.inputs)
                    share = k / args.inputs
                    row = {"product": name, "backend": backend, "M": M, "n": args.inputs, "N": args.outputs,
                           "p": p, "k": k, "dense_ms": dense * 1e3, "kept_ms": kept * 1e3,
                           "of_ideal": share * dense / kept, "dense_fresh_ms": fresh * 1e3,
                           "of_ideal_fresh": share * fresh / kept}
                    rows.append(row)
                    print(f"{name:<16} {backend:<7} {M:>4} {args.inputs:>4} -> {args.outputs:<4} {p:>4}  "
                          f"{row['dense_ms']:>8.3f}  {row['kept_ms']:>8.3f}  {row['of_ideal']:>7.2f}x  "
                          f"{row['dense_fresh_ms']:>8.3f}  {row['of_ideal_fresh']:>7.2f}x")
    if args.json:
        write_text(args.json, json.dumps({"device": device_name(device), "backends": {
            name: ops.get(name).details() for name in backends}, "torch": torch.__version__,
                                          "results": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
