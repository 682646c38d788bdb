"""The three kept products of the native engine against the dense product of the same shape:
``python -m onmt_structdrop.tools.product_bench --help``.

For ``a`` (M x n) and a weight ``wt`` (n x N) with k = (1 - p) n kept units: the forward product
``a[:, K] @ wt[K]``, the input gradient ``dout @ wt[K]^T`` and the weight gradient into the kept rows
``a[:, K]^T @ dout``, each timed against the dense torch product (MKL on CPU) of the full shape. The ideal is
(1 - p) of the dense time; "of ideal" is the ideal time over the measured one (1.0: the whole saving is reached).
Variants run round-robin in one process; medians.
"""
from __future__ import annotations

import argparse
import json

import torch

from ..masks import check_rate, kept_count
from ..ops import native_backend
from .bench import device_name, time_callables


def products(M, n, N, p, generator):
    """``{name: (dense callable, kept callable)}`` for one shape and rate."""
    ext = native_backend.extension()[0]
    k = kept_count(p, n)
    keep = torch.randperm(n, generator=generator)[:k].contiguous()
    a, wt = torch.randn(M, n, generator=generator), torch.randn(n, N, generator=generator)
    dout = torch.randn(M, N, generator=generator)
    a_k = a[:, keep].contiguous()
    out, da, dwt = torch.zeros(M, N), torch.empty(M, k), torch.zeros(n, N)
    return {"forward": (lambda: torch.mm(a, wt), lambda: ext.kept_product(a_k, keep, wt, out)),
            "input gradient": (lambda: torch.mm(dout, wt.t()), lambda: ext.kept_input_grad(dout, keep, wt, da)),
            "weight gradient": (lambda: torch.mm(a.t(), dout), lambda: ext.kept_weight_grad(a_k, keep, dout, dwt))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20, 700], help="M: a step's batch, a sequence's")
    parser.add_argument("--inputs", type=int, default=650, help="n")
    parser.add_argument("--outputs", type=int, default=2600, help="N (4 x hidden for an LSTM's gates)")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    for rate in args.rates:
        check_rate(rate, "--rates")
    ext, why = native_backend.extension()
    if ext is None:
        parser.error(why)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"device: {device_name(torch.device('cpu'))}; kernels: {ext.isa()}; torch {torch.__version__}; "
          f"median of {args.repeats}")
    print(f"{'product':<16} {'M':>4} {'n -> N':>11} {'p':>4}  {'dense ms':>8}  {'kept ms':>8}  {'of ideal':>8}")
    rows = []
    for M in args.rows:
        for p in args.rates:
            runs = products(M, args.inputs, args.outputs, p, generator)
            timed = time_callables({f"{name} {which}": fn for name, pair in runs.items()
                                    for which, fn in zip(("dense", "kept"), pair)}, args.repeats, 3,
                                   torch.device("cpu"))[0]
            for name in runs:
                dense, kept = timed[f"{name} dense"], timed[f"{name} kept"]
                k = kept_count(p, args.inputs)
                row = {"product": name, "M": M, "n": args.inputs, "N": args.outputs, "p": p, "k": k,
                       "dense_ms": dense * 1e3, "kept_ms": kept * 1e3, "of_ideal": k / args.inputs * dense / kept}
                rows.append(row)
                print(f"{name:<16} {M:>4} {args.inputs:>4} -> {args.outputs:<4} {p:>4}  {row['dense_ms']:>8.3f}  "
                      f"{row['kept_ms']:>8.3f}  {row['of_ideal']:>7.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name(torch.device("cpu")), "kernels": ext.isa(), "torch": torch.__version__,
                       "results": rows}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
