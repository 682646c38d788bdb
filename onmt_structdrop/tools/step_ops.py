"""Operations per OpenNMT-py training step, stock beside the plugin: ``python -m onmt_structdrop.tools.step_ops``.

On a GPU a step's cost at these sizes is mostly its launches, so the count that matters is how many kernels a step
launches: torch's profiler counts the kernels the device ran and the launch calls the host made (kernels, graphs).
On the CPU it counts the compute operations (the lowest ``aten::`` operators of each call that are neither views,
metadata nor allocations), each of which is a launch on a GPU. One step of each model (``nmt_bench``'s: the
Multi30k model, batch 64) is profiled after ``--warmup`` steps (so that graphs are captured before); the counts do
not depend on timing.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from ..masks import MASK_MODES
from ..measuring import device_name
from ..textfile import write_text
from . import nmt_bench

LAUNCHES = ("LaunchKernel", "GraphLaunch", "LaunchCooperativeKernel")  # runtime and driver API names
# operators that launch nothing on a GPU: views, metadata and allocations (reshape, contiguous and to compute only
# in the copy they call, when they copy)
NO_KERNEL = frozenset(f"aten::{name}" for name in (
    "empty", "empty_like", "empty_strided", "view", "_unsafe_view", "_reshape_alias", "as_strided", "alias", "t",
    "transpose", "permute", "expand", "expand_as", "unsqueeze", "squeeze", "select", "slice", "narrow", "split",
    "split_with_sizes", "chunk", "unbind", "detach", "lift_fresh", "resolve_conj", "resolve_neg", "is_nonzero",
    "size", "stride", "set_", "_has_compatible_shallow_copy_type", "new_empty", "new_empty_strided", "resize_",
    "detach_", "reshape", "view_as", "flatten", "unflatten", "contiguous", "to", "unsafe_split", "unsafe_chunk",
    "unsafe_split_with_sizes", "is_same_size", "cudnn_is_acceptable"))


def _computes(event):
    """Whether ``event`` is where a kernel runs: neither a view, metadata nor an allocation, and calling no
    operator that is (``mm`` calling only ``resolve_conj`` computes; ``linear`` calling ``addmm`` does not)."""
    return event.name not in NO_KERNEL and not _computes_below(event)


def _computes_below(event):
    return any(c.name.startswith("aten::") and (_computes(c) or _computes_below(c)) for c in event.cpu_children)


def count(step, device, warmup):
    """For one call of ``step``: ``aten`` operators, ``aten_leaf`` (those that call no other), ``compute``
    (:func:`_computes`: what would launch a kernel on a GPU), plus ``kernels``
    (run on the device) and ``launches`` (host calls that launch kernels or graphs) on a GPU."""
    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::") and e.device_type.name == "CPU"]
    leaves = [e for e in aten if not any(c.name.startswith("aten::") for c in e.cpu_children)]
    counts = {"aten": len(aten), "aten_leaf": len(leaves), "compute": sum(map(_computes, aten))}
    if cuda:
        counts["kernels"] = sum(e.device_type.name == "CUDA" for e in events)
        counts["launches"] = sum(e.device_type.name == "CPU" and any(n in e.name for n in LAUNCHES) for e in events)
    return counts


def run(args, device):
    results = [{"variant": name, **count(step, device, args.warmup)}
               for name, step in nmt_bench.steps(args, device).items()]
    stock = results[0]
    for r in results:
        r["vs_stock"] = {k: r[k] / stock[k] for k in stock if isinstance(stock[k], int) and stock[k]}
    return {"device": device_name(device), "torch": torch.__version__,
            "config": {k: v for k, v in vars(args).items() if k != "json"}, "results": results}


def print_report(report):
    c = report["config"]
    print(f"device: {report['device']}; torch {report['torch']}; one OpenNMT training step, {c['layers']}x"
          f"{c['hidden']}, batch {c['batch']} x {c['src_len']}/{c['tgt_len']} tokens, p = {c['dropout']}")
    keys = [k for k in ("kernels", "launches", "compute", "aten_leaf") if k in report["results"][0]]
    names = {"kernels": "kernels run", "launches": "launch calls", "compute": "compute ops", "aten_leaf": "leaf ops"}
    print(f"{'variant':<32}" + "".join(f"{names[k]:>18}" for k in keys))
    for r in report["results"]:
        print(f"{r['variant']:<32}" + "".join(f"{r[k]:>10} ({r['vs_stock'].get(k, 0):.2f}x)" for k in keys))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m onmt_structdrop.tools.step_ops",
                                     description=__doc__.split("\n\n")[0])
    nmt_bench.add_model_args(parser)
    parser.add_argument("--modes", nargs="+", default=["time", "bernoulli"], choices=MASK_MODES)
    parser.add_argument("--warmup", type=int, default=2, help="steps before the profiled one (graphs captured)")
    parser.add_argument("--json", metavar="PATH", help="also write the counts as JSON")
    args = parser.parse_args(argv)
    nmt_bench.check_model_args(parser, args)
    report = run(args, torch.device(args.device))
    print_report(report)
    if args.json:
        write_text(args.json, json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
