"""Time to quality: the training time each model needs to first reach the ordinary model's best validation metric
(and its own best), from full runs' validation curves and each model's step time measured on the idle machine,
not from the wall clock of runs that shared it.

    python -m onmt_structdrop.tools.time_to_quality runs/full/ptb_small_s1 runs/full/ptb_small_baseline_s1 \\
        runs/full/ptb_small_s2 runs/full/ptb_small_baseline_s2 --speed ptb_small.json --plot ptb_small.png
    python -m onmt_structdrop.tools.time_to_quality runs/full/multi30k_deen_s1234 ... --speed speed/*.log

A run is a task run (``history.json``: PTB's validation perplexity or CoNLL's dev F1 after each epoch) or an
``onmt_train`` run (``train.log``: the validation perplexity at each validation step). ``--speed`` is the JSON of
``python -m onmt_structdrop.tasks.speed`` for task runs (each recipe's words/s, stepped round-robin), or the logs
of ``scripts/nmt_speed.sh`` for ``onmt_train`` runs (seconds a step: from the elapsed seconds of the report lines,
between each log's first and last). A run's point after ``w`` words (or
``s`` steps) lies at ``w / words_per_s`` (``s * seconds_per_step``) idle hours of training; evaluation is left out.
Structured and ordinary runs are paired by seed; with several seeds a last row compares the two models' mean
curves (point by point, over their common length).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import yaml

from ..plotting import save_line_plot
from ..tasks import training
from ..textfile import read_lines, write_text
from .nmt_evaluate import validations

_STEP = re.compile(r"Step\s+(\d+)/\s*\d+;.*?tok/s;\s*(\d+) sec;")  # a report: its step and seconds since start
_STRUCTURED = "Structured dropout:"  # the plugin's line in every report of a structured onmt_train run
_SEED = re.compile(r"[-_]s(\d+)$")


@dataclass
class Curve:
    """One run's validation metric against its training progress (words or steps)."""

    run: Path
    structured: bool
    seed: str
    metric: str
    maximise: bool
    progress: List[float]  # words (task runs) or steps (onmt_train runs) trained at each point
    values: List[float]
    final: Optional[float] = None  # the validation metric the run reports (LM: last epoch; NER: best dev epoch)
    test: Optional[float] = None  # the test metric at that point (None where the run has none)
    hours: List[float] = field(default_factory=list)

    def best(self):
        return (max if self.maximise else min)(self.values)

    def first_reaching(self, target) -> Optional[float]:
        """The idle hours at the first point at or past ``target`` (None if it never gets there)."""
        for hours, value in zip(self.hours, self.values):
            if (value >= target) if self.maximise else (value <= target):
                return hours
        return None


def task_curve(run: Path) -> Curve:
    record = training.read_history(run)
    epochs, config = record["epochs"], record["config"]
    if not epochs:
        raise ValueError(f"{run}: no finished epoch yet")
    ner = "dev_f1" in epochs[0]
    words, progress = 0.0, []
    for e in epochs:
        words += e["train_seconds"] * e["words_per_s"]
        progress.append(words)
    metric = "dev_f1" if ner else "valid_ppl"
    # NER keeps the best dev epoch's parameters; the LM is tested after its last epoch, as Zaremba et al.'s
    reported = max(epochs, key=lambda e: e["dev_f1"]) if ner else epochs[-1]
    return Curve(run, config["dropout_impl"] == "structured", config["seed"], metric, ner, progress,
                 [e[metric] for e in epochs], reported[metric], reported.get("test_f1" if ner else "test_ppl"))


def onmt_curve(run: Path) -> Curve:
    log = run / "train.log"
    if not log.is_file():
        raise FileNotFoundError(f"{run}: neither history.json nor train.log (not a run folder)")
    lines = read_lines(log)
    points = [(float(step), ppl) for step, ppl in validations(lines) if step]  # after a training step
    structured = any(_STRUCTURED in line for line in lines)
    steps, values = [step for step, _ in points], [ppl for _, ppl in points]
    if not steps:
        raise ValueError(f"{log}: no validation perplexity after a training step yet")
    seed = _SEED.search(run.name)
    return Curve(run, structured, seed.group(1) if seed else run.name, "valid_ppl", False, steps, values,
                 min(values))


def curve(run: Path) -> Curve:
    return task_curve(run) if (run / training.HISTORY).is_file() else onmt_curve(run)


def task_speeds(path: Path) -> dict:
    """``{structured: words per second}`` from a ``tasks.speed`` JSON (each recipe's ``dropout_impl``)."""
    speeds = {}
    for row in json.loads(path.read_text())["results"]:
        recipe = Path(row["recipe"])
        impl = (yaml.safe_load(recipe.read_text()) or {}).get("dropout_impl", "structured") if recipe.is_file() \
            else ("standard" if "baseline" in recipe.stem else "structured")
        speeds[impl == "structured"] = row["words_per_s"]
    return speeds


def onmt_seconds_per_step(logs: List[Path]) -> dict:
    """``{structured: seconds a step}``: the median over the logs of each model of the seconds between its first
    and its last report over the steps between them (the first report's steps, start-up included, left out)."""
    per_model = {}
    for log in logs:
        lines = read_lines(log)
        structured = any(_STRUCTURED in line for line in lines)
        reports = [(int(m.group(1)), int(m.group(2))) for m in map(_STEP.search, lines) if m]
        if len(reports) < 2 or reports[-1][0] <= reports[0][0]:
            raise ValueError(f"{log}: not enough 'Step ... sec;' report lines")
        (first_step, first_sec), (last_step, last_sec) = reports[0], reports[-1]
        per_model.setdefault(structured, []).append((last_sec - first_sec) / (last_step - first_step))
    return {structured: statistics.median(values) for structured, values in per_model.items()}


def place(curves: List[Curve], speed: List[Path]) -> Optional[float]:
    """Set each curve's idle hours from the measured speeds; returns the structured model's speed-up a step."""
    if all((c.run / training.HISTORY).is_file() for c in curves):
        if len(speed) != 1:
            raise ValueError("task runs take one --speed: the JSON of python -m onmt_structdrop.tasks.speed")
        rates = task_speeds(speed[0])
        per_unit = {structured: 1.0 / rate for structured, rate in rates.items()}
    else:
        per_unit = onmt_seconds_per_step(speed)
    for c in curves:
        if c.structured not in per_unit:
            raise ValueError(f"--speed holds no {'structured' if c.structured else 'ordinary'} model for {c.run}")
        c.hours = [p * per_unit[c.structured] / 3600 for p in c.progress]
    return per_unit[False] / per_unit[True] if len(per_unit) == 2 else None


def pairs(curves: List[Curve]) -> List[Tuple[Curve, Curve]]:
    """``(structured, ordinary)`` by seed."""
    by_seed = {}
    for c in curves:
        by_seed.setdefault(c.seed, {})[c.structured] = c
    missing = [seed for seed, pair in by_seed.items() if len(pair) != 2]
    if missing:
        raise ValueError(f"seeds {', '.join(missing)} lack a structured or an ordinary run")
    return [(pair[True], pair[False]) for _, pair in sorted(by_seed.items())]


def mean_curve(curves: List[Curve]) -> Curve:
    """The point-by-point mean of runs of one model over their common length (the noise of a single seed's
    best, dev F1 in particular, is as large as the differences sought)."""
    n = min(len(c.values) for c in curves)
    mean = lambda lists: [statistics.mean(v[i] for v in lists) for i in range(n)]  # noqa: E731
    first = curves[0]
    return Curve(first.run, first.structured, "mean", first.metric, first.maximise,
                 mean([c.progress for c in curves]), mean([c.values for c in curves]),
                 hours=mean([c.hours for c in curves]))


def compare(structured: Curve, ordinary: Curve, tolerance: float = 0.0) -> dict:
    """The times to the ordinary model's best (less ``tolerance``, in the metric's units, towards worse) and to
    each model's own best, and their ratio."""
    target = ordinary.best() + (-tolerance if ordinary.maximise else tolerance)
    to_target = structured.first_reaching(target)
    ordinary_time = ordinary.first_reaching(target)
    return {"seed": structured.seed, "metric": ordinary.metric, "ordinary_best": ordinary.best(), "target": target,
            "structured_best": structured.best(), "ordinary_hours": ordinary_time,
            "structured_hours_to_ordinary_best": to_target,
            "structured_hours_to_own_best": structured.first_reaching(structured.best()),
            "ratio": ordinary_time / to_target if to_target else None}


def spread(values) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "n": len(values)}


def fidelity(matched: List[Tuple[Curve, Curve]]) -> dict:
    """Per model, the mean and range over seeds of the reported validation and test metrics."""
    return {name: {"valid": spread([pair[i].final for pair in matched]),
                   "test": spread([pair[i].test for pair in matched])}
            for i, name in enumerate(("structured", "ordinary"))}


def fidelity_table(summary: dict, metric: str, speedup: Optional[float], ratio: Optional[float]) -> str:
    def cell(s):
        if s["mean"] is None:
            return "none"
        return f"{s['mean']:.2f}" + (f" ({s['min']:.2f}-{s['max']:.2f})" if s["n"] > 1 else "")
    test = "test ppl" if metric == "valid_ppl" else "test F1"
    lines = [f"| model | seeds | {metric.replace('_', ' ')}: mean (range) | {test}: mean (range) |", "|---" * 4 + "|"]
    for name in ("ordinary", "structured"):
        s = summary[name]
        lines.append(f"| {name} | {s['valid']['n']} | {cell(s['valid'])} | {cell(s['test'])} |")
    o, st = summary["ordinary"], summary["structured"]
    diff = lambda key: (f"{st[key]['mean'] - o[key]['mean']:+.2f}" + (  # noqa: E731
        f" ({100 * (st[key]['mean'] / o[key]['mean'] - 1):+.1f}%)" if metric == "valid_ppl" else "")
        if st[key]["mean"] is not None and o[key]["mean"] is not None else "none")
    lines.append(f"| structured - ordinary | | {diff('valid')} | {diff('test')} |")
    extra = []
    if speedup:
        extra.append(f"step speed-up {speedup:.2f}x")
    if ratio:
        extra.append(f"time to the ordinary model's best {ratio:.2f}x")
    return "\n".join(lines) + ("\n\n" + "; ".join(extra) if extra else "")


def table(rows) -> str:
    fmt = lambda v, spec=".2f": "not reached" if v is None else format(v, spec)  # noqa: E731
    metric = rows[0]["metric"].replace("_", " ")
    lines = [f"| seed | ordinary best {metric} | structured best | target | ordinary h to the target | structured h "
             f"to the target | structured h to its own best | time-to-quality ratio |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['ordinary_best']:.2f} | {r['structured_best']:.2f} | {r['target']:.2f} | "
                     f"{fmt(r['ordinary_hours'])} | {fmt(r['structured_hours_to_ordinary_best'])} | "
                     f"{fmt(r['structured_hours_to_own_best'])} | {fmt(r['ratio'])}{'x' if r['ratio'] else ''} |")
    return "\n".join(lines)


def plot(path: Path, curves: List[Curve]):
    seeds = sorted({c.seed for c in curves})
    series = [(f"{'structured' if c.structured else 'ordinary'}, seed {c.seed}", c.hours, c.values,
               {"color": "C0" if c.structured else "C1", "ls": ["-", "--", ":", "-."][seeds.index(c.seed) % 4],
                "marker": "."}) for c in curves]
    label = {"valid_ppl": "validation perplexity", "dev_f1": "dev span F1 (%)"}[curves[0].metric]
    save_line_plot(path, series, "training hours on the idle machine (estimated from the measured speeds)", label,
                   log_y=curves[0].metric == "valid_ppl")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m onmt_structdrop.tools.time_to_quality",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, a structured and an ordinary run per seed")
    parser.add_argument("--speed", nargs="+", type=Path, required=True,
                        help="tasks.speed's JSON (task runs) or scripts/nmt_speed.sh's logs (onmt_train runs)")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="count the ordinary model's best as reached within this much of it, in the metric's "
                             "units (e.g. 0.2 for dev F1: a single best is as noisy as the differences sought)")
    parser.add_argument("--plot", type=Path, help="PNG of the validation metric against the idle training hours")
    parser.add_argument("--json", type=Path, help="also write the comparisons as JSON")
    args = parser.parse_args(argv)
    try:
        curves = [curve(run) for run in args.runs]
        if len({c.metric for c in curves}) > 1:
            raise ValueError("the runs mix tasks (their validation metrics differ)")
        speedup = place(curves, args.speed)
        matched = pairs(curves)
        rows = [compare(s, o, args.tolerance) for s, o in matched]
        if len(matched) > 1:
            rows.append(compare(mean_curve([s for s, _ in matched]), mean_curve([o for _, o in matched]),
                                args.tolerance))
        summary = fidelity(matched)
    except (OSError, ValueError, KeyError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(fidelity_table(summary, curves[0].metric, speedup, rows[-1]["ratio"]))
    print()
    print(table(rows))
    if args.json:
        write_text(args.json, json.dumps({"runs": [str(r) for r in args.runs], "speed": [str(s) for s in args.speed],
                                          "step_speedup": speedup, "fidelity": summary, "comparisons": rows},
                                         indent=1))
    if args.plot:
        plot(args.plot, curves)
        print(f"plot: {args.plot}")
    return rows


if __name__ == "__main__":
    main()
