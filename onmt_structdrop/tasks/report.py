"""Compare finished task runs (PTB LM or CoNLL NER): a markdown table per run and per dropout implementation
(mean over seeds), words/s relative to the ordinary-dropout runs, and the runs' learning curves in one PNG.

    python -m onmt_structdrop.tasks.report runs/ptb_small runs/ptb_small_baseline --plot runs/ptb_small.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean

from . import training

# task: (validation metric, whether the best epoch maximises it (NER) or is the last one (LM), its plot label)
TASKS = {"lm": ("valid_ppl", False, "perplexity"), "ner": ("dev_f1", True, "span F1 (%)")}


def summarise(run_dir: Path):
    record = training.read_history(run_dir)
    epochs, config = record["epochs"], record["config"]
    if not epochs:
        raise ValueError(f"{run_dir}: no finished epoch yet")
    task = "ner" if "dev_f1" in epochs[0] else "lm"
    key, maximise, _ = TASKS[task]
    chosen = max(epochs, key=lambda e: e[key]) if maximise else epochs[-1]
    final = {"valid_ppl": chosen.get("valid_ppl"), "test_ppl": epochs[-1].get("test_ppl")} if task == "lm" else \
        {"dev_f1": chosen["dev_f1"], "test_f1": chosen["test_f1"]}
    words = sum(e["train_seconds"] * e["words_per_s"] for e in epochs)
    return {"run": str(run_dir), "task": task, "impl": config["dropout_impl"], "mode": config["mask_mode"],
            "seed": config["seed"], "epochs": len(epochs), "epoch": chosen["epoch"], **final,
            "words_per_s": words / sum(e["train_seconds"] for e in epochs), "history": epochs}


def _impl(row):
    """The run's dropout: ``standard`` (its mask mode is unused) or ``structured (mode)``."""
    return "standard" if row["impl"] == "standard" else f"structured ({row['mode']})"


def _style(row, rows):
    """A colour per implementation, a line style per seed."""
    impls = list(dict.fromkeys(_impl(r) for r in rows))
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    return {"color": f"C{impls.index(_impl(row)) % 10}", "ls": ["-", "--", ":", "-."][seeds.index(row["seed"]) % 4]}


def table(rows):
    task = rows[0]["task"]
    metrics = ["valid_ppl", "test_ppl"] if task == "lm" else ["dev_f1", "test_f1"]
    standard = [r["words_per_s"] for r in rows if r["impl"] == "standard"]
    base = mean(standard) if standard else rows[0]["words_per_s"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"| run | dropout | seed | epochs | {' | '.join(m.replace('_', ' ') for m in metrics)} | words/s | "
             f"speed vs {'ordinary' if standard else 'first run'} |", "|---" * (6 + len(metrics)) + "|"]
    for r in rows:
        lines.append(f"| {Path(r['run']).name} | {_impl(r)} | {r['seed']} | {r['epochs']} | "
                     f"{' | '.join(fmt(r[m]) for m in metrics)} | {r['words_per_s']:.0f} | "
                     f"{r['words_per_s'] / base:.2f}x |")
    lines += ["", f"| dropout | runs | {' | '.join('mean ' + m.replace('_', ' ') for m in metrics)} | mean words/s | "
                  f"speed |", "|---" * (4 + len(metrics)) + "|"]
    for impl in dict.fromkeys(_impl(r) for r in rows):
        group = [r for r in rows if _impl(r) == impl]
        values = [fmt(mean(r[m] for r in group) if all(r[m] is not None for r in group) else None) for m in metrics]
        speed = mean(r["words_per_s"] for r in group)
        lines.append(f"| {impl} | {len(group)} | {' | '.join(values)} | {speed:.0f} | {speed / base:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m onmt_structdrop.tasks.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="save_dir of each run")
    parser.add_argument("--plot", type=Path, help="PNG of the runs' validation curves")
    args = parser.parse_args(argv)
    try:
        rows = [summarise(run) for run in args.runs]
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    if len({r["task"] for r in rows}) > 1:
        parser.error("the runs mix language-modelling and NER runs")
    print(table(rows))
    if args.plot:
        key, _, ylabel = TASKS[rows[0]["task"]]
        training.plot_curves(args.plot, [(f"{Path(r['run']).name} ({_impl(r)}, seed {r['seed']})", r["history"],
                                          _style(r, rows)) for r in rows], (key,), ylabel)
        print(f"plot: {args.plot}")
    return rows


if __name__ == "__main__":
    main()
