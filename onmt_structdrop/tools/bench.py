"""Forward+backward time of LSTM variants side by side: ``python -m onmt_structdrop.tools.bench --help``.

Variants run round-robin in one process, so machine noise hits all of them alike; the table gives medians and
ratios. ``nn.LSTM`` (cuDNN on GPU) cannot drop h(t-1), so it gets the non-recurrent dropout only: it is what a
user runs today. "dense masks" is this code with the same structured masks multiplied in instead of skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
from torch import nn

from .. import StructDropLSTM, ops
from ..linear import StructuredDropoutLinear
from ..masks import DEFAULT_POOL_SIZE, MASK_MODES, STRUCTURED_MODES, check_rate, kept_count, sample_mask
from ..measuring import device_name, time_callables
from ..plotting import save_line_plot
from ..textfile import write_text


class NNLSTMWithDropout(nn.Module):
    """The user's alternative: ``nn.Dropout`` on the input and ``nn.LSTM``'s own dropout between layers."""

    def __init__(self, n_in, hidden, layers, p):
        super().__init__()
        self.drop = nn.Dropout(p)
        self.lstm = nn.LSTM(n_in, hidden, layers, dropout=p if layers > 1 else 0.0)

    def forward(self, x):
        return self.lstm(self.drop(x))


def ideal_ratio(args):
    """Dense over compacted FLOPs of the matrix products (forward, input gradient, weight gradient)."""
    H, n0 = args.hidden, args.input_size
    dense = compact = 0.0
    for layer in range(args.layers):
        n_in = n0 if layer == 0 else H
        for n, p in ((n_in, args.dropout), (H, args.recurrent_dropout)):
            k = n if p == 0 else kept_count(p, n)
            dense += n
            compact += k
    return dense / compact


class Preferred(nn.Module):
    """``model`` with backend ``name`` put first for its forward calls (:func:`onmt_structdrop.ops.preferred`), its
    packed masks kept packed (:func:`onmt_structdrop.ops.always_compact`): a row times that backend's compacted
    path, whether or not the seam would pick it (the dense-mask row beside it times the other side).
    ``host_masks``: its masks drawn on the host even where the device draws its own."""

    def __init__(self, model, name, host_masks=False):
        super().__init__()
        self.model, self.name, self.host_masks = model, name, host_masks

    def forward(self, *args):
        with ops.preferred(self.name), ops.always_compact(), \
                ops.masks_on_host() if self.host_masks else contextlib.nullcontext():
            return self.model(*args)


def serves(name, op, mode, args, device, dtype):
    """Whether backend ``name``, put first, serves ``op`` for masks of ``mode`` at the benchmark's shape (a
    backend that declines would have its row timed on the next one)."""
    mask = ops.prepare(sample_mask(mode, args.dropout, args.hidden, args.seq, batch=args.batch,
                                   pool_size=args.pool_size), device, dtype)
    plan = mask if op == "sequence" else ops.LayerPlan(mask, mask, None, False)
    with ops.preferred(name):
        return ops.select(op, torch.zeros(1, device=device, dtype=dtype), plan).NAME == name


def structured_variants(make, args, device, op="lstm_layer"):
    """One variant per structured mode and backend that serves it (``structured time [torch]``), the other modes
    once."""
    variants = {}
    for mode in args.modes:
        if mode not in STRUCTURED_MODES:
            variants[f"{mode} (dense)"] = make(mask_mode=mode)
            continue
        for name in args.backends or ops.serving(device):
            if serves(name, op, mode, args, device, getattr(torch, args.dtype)):
                variants[f"structured {mode} [{name}]"] = Preferred(make(mask_mode=mode), name)
    return variants


NR_ONLY_SUFFIX = ", NR only"
NR_ONLY = "structured time [{}]" + NR_ONLY_SUFFIX  # the row at nn.LSTM's dropout sites
HOST_MASKS = "structured time [{}], host masks"  # where the device draws its masks: the same drawn on the host


def build_variants(args, device):
    """The layer's variants. The structured ones drop h(t-1) too (``--recurrent-dropout``), which ``nn.LSTM``
    cannot; where they do, a ``time`` row without it, on the first backend serving the device, compares at the
    same dropout sites as ``nn.LSTM`` (the method's share of the speed, against :func:`ideal_ratio` of the same
    sites)."""
    H, n_in, L, p, r = args.hidden, args.input_size, args.layers, args.dropout, args.recurrent_dropout
    make = lambda recurrent=r, **kw: StructDropLSTM(  # noqa: E731
        n_in, H, L, dropout=p, input_dropout=p, recurrent_dropout=recurrent, pool_size=args.pool_size, **kw).to(device)
    variants = {"nn.LSTM + dropout (NR only)": NNLSTMWithDropout(n_in, H, L, p).to(device),
                f"dense masks ({args.dense_mode})": make(mask_mode=args.dense_mode, compact=False)}
    variants.update(structured_variants(make, args, device))
    first = (args.backends or ops.serving(device))[0]
    if r > 0 and "time" in args.modes and f"structured time [{first}]" in variants:
        variants[NR_ONLY.format(first)] = Preferred(make(recurrent=0.0, mask_mode="time"), first)
    if "time" in args.modes and f"structured time [{first}]" in variants and ops.draws_masks_on(device):
        variants[HOST_MASKS.format(first)] = Preferred(make(mask_mode="time"), first, host_masks=True)
    return variants


def build_output_variants(args, device):
    """Dropout then the output projection (``hidden -> output_size``), as after the LSTM of a language model."""
    H, V, p = args.hidden, args.output_size, args.dropout
    make = lambda **kw: StructuredDropoutLinear(  # noqa: E731
        H, V, dropout=p, pool_size=args.pool_size, **kw).to(device)
    variants = {"nn.Dropout + nn.Linear": nn.Sequential(nn.Dropout(p), nn.Linear(H, V)).to(device),
                f"dense masks ({args.dense_mode})": make(mask_mode=args.dense_mode, compact=False)}
    structured = argparse.Namespace(**{**vars(args), "modes": [m for m in args.modes if m in STRUCTURED_MODES]})
    variants.update(structured_variants(make, structured, device, op="sequence"))
    return variants


def _results(medians, peaks, base_key="vs_nn_lstm"):
    """Per variant: median ms and ratios against the first variant (``base_key``) and the second (dense masks)."""
    names = list(medians)
    base, dense = medians[names[0]], medians[names[1]]
    return [{"variant": n, "ms": medians[n] * 1e3, base_key: base / medians[n], "vs_dense": dense / medians[n],
             **({"peak_mib": peaks[n] / 2**20} if n in peaks else {})} for n in names]


def set_tf32(choice):
    """``--tf32``: ``torch`` leaves torch's defaults (cuBLAS off, cuDNN on); ``on``/``off`` set both alike."""
    if choice != "torch":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = choice == "on"


def train_step(model, x):
    """One forward and backward of ``model`` on ``x`` (an LSTM's output and final state, or a projection's)."""
    x.grad = None
    out = model(x)
    if isinstance(out, tuple):  # an LSTM: output and final states
        out, (h, _) = out
        out = out.float().square().mean() + h.float().mean()
    else:
        out = out.float().square().mean()
    out.backward()


def time_variants(variants, x, args, device):
    for model in variants.values():
        model.train()
    return time_callables({name: (lambda m=model: train_step(m, x)) for name, model in variants.items()},
                          args.repeats, args.warmup, device)


def profile_variants(variants, x, device, top):
    """Print, per variant, the ``top`` operations by their own time in one forward+backward (operators and CUDA
    kernels on a GPU, whose table ends with the device's total; CPU operators otherwise) beside the step's wall
    time under the profiler."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for name, model in variants.items():
        for _ in range(2):  # the second call of a shape captures its CUDA graphs, later ones replay them
            train_step(model, x)
        sync()
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            start = time.perf_counter()
            train_step(model, x)
            sync()
            wall = time.perf_counter() - start
        events = prof.key_averages()
        kind = "cpu"
        if cuda:  # torch before 2.4 names the device time cuda
            kind = "device" if hasattr(events[0], "self_device_time_total") else "cuda"
        print(f"\nprofile of {name}: {wall * 1e3:.2f} ms wall under the profiler")
        print(events.table(sort_by=f"self_{kind}_time_total", row_limit=top, max_name_column_width=70))


def run(args, device, dtype):
    """Time every variant for one configuration; returns the report (see ``--json``)."""
    torch.manual_seed(args.seed)
    variants = build_variants(args, device)
    for model in variants.values():
        model.to(dtype)
    x = torch.randn(args.seq, args.batch, args.input_size, device=device, dtype=dtype, requires_grad=True)
    medians, peaks = time_variants(variants, x, args, device)
    if args.profile:
        profile_variants(variants, x, device, args.profile)
    results = _results(medians, peaks)
    # the NR-only row answers another question (dropout at nn.LSTM's sites only): it is no candidate
    structured = [r for r in results if r["variant"].startswith("structured") and not r["variant"].endswith(NR_ONLY_SUFFIX)]
    best = max(structured, key=lambda r: r["vs_nn_lstm"]) if structured else None
    time_mode = max((r for r in structured if r["variant"].startswith("structured time ")),
                    key=lambda r: r["vs_nn_lstm"], default=None)
    config = {k: v for k, v in vars(args).items() if k not in ("json", "plot", "rates")}
    output_layer = None
    if args.output_size:
        outputs = build_output_variants(args, device)
        for model in outputs.values():
            model.to(dtype)
        y = torch.randn(args.seq, args.batch, args.hidden, device=device, dtype=dtype, requires_grad=True)
        k = args.hidden if args.dropout == 0 else kept_count(args.dropout, args.hidden)
        output_layer = {"results": _results(*time_variants(outputs, y, args, device), base_key="vs_linear"),
                        "ideal_ratio": args.hidden / k}
    return {"device": device_name(device), "torch": torch.__version__, "config": config, "results": results,
            "ideal_ratio": ideal_ratio(args),
            "ideal_ratio_nr_only": ideal_ratio(argparse.Namespace(**{**vars(args), "recurrent_dropout": 0.0})),
            "fastest_structured": best["variant"] if best else None,
            "speedup_vs_nn_lstm": best["vs_nn_lstm"] if best else None,
            "speedup_vs_dense": best["vs_dense"] if best else None,
            "time_mode": time_mode["variant"] if time_mode else None,
            "time_mode_vs_nn_lstm": time_mode["vs_nn_lstm"] if time_mode else None,
            "time_mode_vs_dense": time_mode["vs_dense"] if time_mode else None,
            "output_layer": output_layer}


def print_report(report):
    c = report["config"]
    print(f"device: {report['device']}; torch {report['torch']}; {c['layers']} layers, hidden {c['hidden']}, "
          f"input {c['input_size']}, batch {c['batch']}, seq {c['seq']}, NR p={c['dropout']}, "
          f"RH p={c['recurrent_dropout']}, {c['dtype']}, median of {c['repeats']}")
    _print_table(report["results"], "vs_nn_lstm", "vs nn.LSTM")
    print(f"ideal ratio (dense / compacted product FLOPs): {report['ideal_ratio']:.2f}x; at nn.LSTM's dropout sites "
          f"(NR only): {report['ideal_ratio_nr_only']:.2f}x")
    if report["fastest_structured"]:
        print(f"fastest structured: {report['fastest_structured']}: {report['speedup_vs_nn_lstm']:.2f}x vs "
              f"nn.LSTM, {report['speedup_vs_dense']:.2f}x vs dense masks")
    if report["output_layer"]:
        print(f"\noutput layer: dropout then Linear {c['hidden']} -> {c['output_size']} on {c['seq']} x {c['batch']} "
              f"rows, NR p={c['dropout']}")
        _print_table(report["output_layer"]["results"], "vs_linear", "vs Linear")
        print(f"ideal ratio: {report['output_layer']['ideal_ratio']:.2f}x")


def _print_table(results, base_key, base_label):
    width = max(len(r["variant"]) for r in results)
    peaks = "peak_mib" in results[0]
    print(f"{'variant':<{width}}  {'fwd+bwd ms':>10}  {base_label:>10}  {'vs dense':>8}"
          + ("  peak MiB" if peaks else ""))
    for r in results:
        print(f"{r['variant']:<{width}}  {r['ms']:>10.2f}  {r[base_key]:>9.2f}x  {r['vs_dense']:>7.2f}x"
              + (f"  {r['peak_mib']:>8.1f}" if peaks else ""))


def plot_sweep(reports, path):
    rates = [r["config"]["dropout"] for r in reports]
    speedup = lambda r, name: next(x["vs_nn_lstm"] for x in r["results"] if x["variant"] == name)  # noqa: E731
    names = [x["variant"] for x in reports[0]["results"][1:]]
    series = [(name, rates, [speedup(r, name) for r in reports], {}) for name in names]
    series.append(("ideal (dense masks x FLOP ratio)", rates,
                   [r["ideal_ratio"] * speedup(r, names[0]) for r in reports], {"color": "k", "ls": "--",
                                                                                "marker": None}))
    c = reports[0]["config"]
    save_line_plot(path, series, "dropout rate (NR = RH)", "fwd+bwd speed-up over nn.LSTM + dropout",
                   title=f"{reports[0]['device']}: {c['layers']}x{c['hidden']}, batch {c['batch']}, seq {c['seq']}",
                   hline=1.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=650)
    parser.add_argument("--input-size", type=int, default=None, help="default: the hidden size")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--seq", type=int, default=35)
    parser.add_argument("--dropout", type=float, default=0.5, help="non-recurrent rate (input and between layers)")
    parser.add_argument("--recurrent-dropout", type=float, default=0.5)
    parser.add_argument("--output-size", type=int, default=10000,
                        help="also time dropout + the output projection to this many classes (0: skip)")
    parser.add_argument("--rates", type=float, nargs="+", help="sweep: run once per rate, used for NR and RH")
    parser.add_argument("--plot", metavar="PNG", help="with --rates: plot speed-up against the rate")
    parser.add_argument("--modes", nargs="+", default=["time", "pool", "batch", "rbd", "tbd", "bernoulli"],
                        choices=MASK_MODES)
    parser.add_argument("--backends", nargs="+", choices=ops.BACKENDS,
                        help="backends to time the structured modes with (default: every one available here)")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE, help="default: automatic")
    parser.add_argument("--dense-mode", default="time", choices=STRUCTURED_MODES,
                        help="mask mode of the dense-masks variant")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--tf32", choices=["torch", "on", "off"], default="torch",
                        help="float32 on CUDA: may cuBLAS and cuDNN use TF32 tensor cores (torch: its defaults, "
                             "cuBLAS off and cuDNN on, so nn.LSTM uses them and the products do not)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile one step of each variant and print its N costliest operations")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    args.input_size = args.input_size or args.hidden
    for name, rate in [("--dropout", args.dropout), ("--recurrent-dropout", args.recurrent_dropout)] + [
            ("--rates", r) for r in args.rates or []]:
        check_rate(rate, name)
    if args.output_size < 0:
        parser.error(f"--output-size must be >= 0, got {args.output_size}")
    for name in ("layers", "hidden", "input_size", "batch", "seq", "repeats", "pool_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.profile < 0:
        parser.error(f"--profile must be >= 0 (0: no profile), got {args.profile}")
    if args.plot and not args.rates:
        parser.error("--plot needs --rates")
    for name in args.backends or []:
        ok, reason = ops.availability(name)
        if not ok:
            parser.error(f"--backends {name}: that backend is not available here ({reason})")
    if args.threads:
        torch.set_num_threads(args.threads)
    set_tf32(args.tf32)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    reports = []
    for rate in args.rates or [None]:
        run_args = argparse.Namespace(**vars(args))
        if rate is not None:
            run_args.dropout = run_args.recurrent_dropout = rate
        reports.append(run(run_args, device, dtype))
        print_report(reports[-1])
        print()
    if args.json:
        write_text(args.json, json.dumps(reports[0] if not args.rates else {"sweep": reports}, indent=2))
    if args.plot:
        plot_sweep(reports, args.plot)
        print(f"plot: {args.plot}")
    return reports[0] if not args.rates else reports



def cli(argv=None):
    """The console command: its entry point passes the return value to ``sys.exit``, so it returns nothing."""
    main(argv)


if __name__ == "__main__":
    main()
