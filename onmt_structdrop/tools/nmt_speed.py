"""Table the training speed of alternating runs (``scripts/nmt_speed.sh``): each log's target tokens/s (median of
its report lines after the first) and, per round, a recipe's ratio to its ``_baseline`` twin.

    python -m onmt_structdrop.tools.nmt_speed runs/speed/multi30k_deen_r1.log runs/speed/multi30k_deen_baseline_r1.log
"""
from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from .nmt_evaluate import training_log

_RUN = re.compile(r"^(?P<recipe>.+)_r(?P<round>\d+)$")


def speed_table(logs) -> str:
    runs = {}
    for path in logs:
        m = _RUN.match(Path(path).stem)
        if not m:
            raise SystemExit(f"{path}: expected a log named RECIPE_rN.log")
        runs[(m["recipe"], int(m["round"]))] = training_log(Path(path))["tgt_tok_s"]
    lines = ["| run | round | tgt tok/s | vs baseline (same round) |", "|---|---|---|---|"]
    ratios = {}
    for (recipe, rnd), tok_s in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0].endswith("_baseline"))):
        base = runs.get((recipe + "_baseline", rnd))
        ratio = f"{tok_s / base:.2f}x" if base else ""
        if base:
            ratios.setdefault(recipe, []).append(tok_s / base)
        lines.append(f"| {recipe} | {rnd} | {tok_s:.0f} | {ratio} |")
    for recipe, rs in ratios.items():
        lines.append(f"| {recipe} | median of {len(rs)} | | {statistics.median(rs):.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="onmt_train logs named RECIPE_rN.log")
    print(speed_table(parser.parse_args(argv).logs))


if __name__ == "__main__":
    main()
