"""Training speed of a task recipe against another (its ordinary-dropout twin), round-robin in one process.

    python -m onmt_structdrop.tasks.speed lm recipes/ptb_small.yaml recipes/ptb_small_baseline.yaml \\
        -data ../shared/data/ptb -threads 1
    python -m onmt_structdrop.tasks.speed ner recipes/conll2003.yaml recipes/conll2003_baseline.yaml \\
        -train ../shared/data/conll2003/eng.train -dev ../shared/data/conll2003/eng.testa \\
        -test ../shared/data/conll2003/eng.testb -threads 1

Both models are built as their runs build them (``onmt-structdrop-lm`` / ``-ner``: same seed, data and batches in
the same order) and trained one step of each in turn, so that the machine's swings hit both alike; runs of their
own, one after the other, spread by 10-20% on a shared machine. Options other than this command's own go to both
recipes. Prints each recipe's words/s over the timed steps and its speed against the second recipe, with the median
and quartiles of the ratios of the step pairs; ``--json`` and ``--plot`` (the pairs' ratios, PNG) keep them.

Where the task names the products its dropout shrinks (``lm``: ``lm.shrinkable_shapes``) and the first recipe is
structured, the round-robin also times those products at full width, and an ideal row gives what skipping every
dropped unit's work with no overhead at all would give: each baseline step less the dropout rate times the
products' turn beside it. Everything else in the step (the loss, embeddings, gates, the optimizer) is the same
work with or without dropout, so the ideal bounds the speed-up that skipping can give.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..measuring import cpu_name, full_width_products
from ..plotting import save_line_plot
from ..textfile import write_text
from . import lm, ner

TASKS = {"lm": lm, "ner": ner}


def time_pairs(step_streams, steps, warmup):
    """Seconds and words of each stream's next ``steps`` steps after ``warmup``, one step of each in turn."""
    seconds = [[] for _ in step_streams]
    words = [0 for _ in step_streams]
    for n in tqdm(range(warmup + steps), desc="steps", unit="pair", mininterval=2, leave=False, disable=None):
        for i, stream in enumerate(step_streams):
            count, step = next(stream)
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if n >= warmup:
                seconds[i].append(elapsed)
                words[i] += count
    return seconds, words


def summary(recipes, seconds, words):
    """Per recipe: median ms a step, words/s and speed against the last recipe; the step pairs' ratios."""
    rates = [w / sum(s) for s, w in zip(seconds, words)]
    pairs = [[b / a for a, b in zip(s, seconds[-1])] for s in seconds]
    rows = [{"recipe": str(r), "ms_per_step": 1e3 * statistics.median(s), "words_per_s": rate,
             "speed": rate / rates[-1], "pair_ratio_median": statistics.median(p),
             "pair_ratio_quartiles": statistics.quantiles(p, n=4)[::2]}
            for r, s, rate, p in zip(recipes, seconds, rates, pairs)]
    return rows, pairs


def shrinkable_products(task, args, model):
    """``{rate: callable}`` running the products that the recipe's dropout at that rate shrinks, at full width
    (none where the task does not name them or the recipe is not structured)."""
    if not hasattr(task, "shrinkable_shapes") or args.dropout_impl != "structured":
        return {}
    device = torch.device(args.device)

    def finished(run):  # a training step ends in the loss's .item(); products on a GPU must be waited for too
        return run if device.type != "cuda" else lambda: (run(), torch.cuda.synchronize(device))

    return {rate: finished(full_width_products(shapes, device, args.seed))
            for rate, shapes in task.shrinkable_shapes(args, model).items()}


def ideal(baseline_seconds, words, product_seconds):
    """The ideal as a row of the table: every baseline step less each rate times that step's turn of the products
    it shrinks; its words/s and speed over all steps, as the recipes' (ms a step: the medians')."""
    baseline = sum(baseline_seconds)
    total = baseline - sum(rate * sum(s) for rate, s in product_seconds.items())
    medians = {rate: statistics.median(s) for rate, s in product_seconds.items()}
    step = statistics.median(baseline_seconds)
    return {"ms_per_step": 1e3 * (step - sum(rate * m for rate, m in medians.items())), "words_per_s": words / total,
            "speed": baseline / total,
            "shrinkable_ms": {str(rate): 1e3 * m for rate, m in medians.items()},
            "shrinkable_share": sum(medians.values()) / step}


def print_table(rows, head, best=None):
    print(head)
    width = max(len(r["recipe"]) for r in rows)
    print(f"{'recipe':{width}s}  ms/step  words/s   speed  step pairs: median (quartiles)")
    for r in rows:
        q1, q3 = r["pair_ratio_quartiles"]
        print(f"{r['recipe']:{width}s}  {r['ms_per_step']:7.1f}  {r['words_per_s']:7.0f}  {r['speed']:5.2f}x  "
              f"{r['pair_ratio_median']:.2f}x ({q1:.2f}x-{q3:.2f}x)")
    if best:
        print(f"{'ideal (baseline - p x shrinkable)':{width}s}  {best['ms_per_step']:7.1f}  "
              f"{best['words_per_s']:7.0f}  {best['speed']:5.2f}x")
        print(f"products the dropout shrinks: {sum(best['shrinkable_ms'].values()):.1f} ms a step at full width, "
              f"{100 * best['shrinkable_share']:.0f}% of the baseline's step (medians)")


def main(argv=None):
    # no -h and no abbreviations: the recipes' single-dash options (-hidden_size, -data) pass through untouched
    parser = argparse.ArgumentParser(prog="python -m onmt_structdrop.tasks.speed", add_help=False, allow_abbrev=False,
                                     description=__doc__.split("\n\n")[0],
                                     epilog="Other options (-data, -threads, ...) go to both recipes.")
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("task", choices=sorted(TASKS), help="lm (onmt-structdrop-lm) or ner (onmt-structdrop-ner)")
    parser.add_argument("recipe", type=Path, help="the recipe to time, e.g. recipes/ptb_small.yaml")
    parser.add_argument("baseline", type=Path, help="the recipe it is compared with, e.g. its _baseline twin")
    parser.add_argument("--steps", type=int, default=200, help="timed steps of each recipe")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each recipe first")
    parser.add_argument("--json", type=Path, help="write the figures and every step's seconds here")
    parser.add_argument("--plot", type=Path, help="PNG of the step pairs' ratios")
    args, rest = parser.parse_known_args(argv)
    if args.steps < 2 or args.warmup < 0:
        parser.error(f"--steps must be >= 2 and --warmup >= 0, got {args.steps} and {args.warmup}")
    task = TASKS[args.task]
    recipes = [args.recipe, args.baseline]
    options = [task.parse(["-config", str(r), *rest]) for r in recipes]
    if options[0].threads:
        torch.set_num_threads(options[0].threads)
    try:
        built = [task.training_steps(o) for o in options]
        products = shrinkable_products(task, options[0], built[0][0])
        streams = [steps for _, steps in built] + [itertools.repeat((0, run)) for run in products.values()]
        seconds, words = time_pairs(streams, args.steps, args.warmup)
    except (OSError, ValueError) as err:  # missing or malformed data: one line
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    seconds, product_seconds = seconds[:len(recipes)], dict(zip(products, seconds[len(recipes):]))
    rows, pairs = summary(recipes, seconds, words[:len(recipes)])
    best = ideal(seconds[-1], words[len(recipes) - 1], product_seconds) if products else None
    device = torch.device(options[0].device)
    if device.type == "cuda":
        device = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        device = f"{cpu_name()}, {threads} thread{'s' * (threads > 1)}"
    head = (f"{args.task}: {args.steps} steps of each recipe in turn after {args.warmup}, {device}, "
            f"torch {torch.__version__}")
    print_table(rows, head, best)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps({"command": " ".join(["python -m onmt_structdrop.tasks.speed",
                                                                   *(sys.argv[1:] if argv is None else argv)]),
                                         "setup": head, "results": rows, "ideal": best, "step_seconds": seconds,
                                         "product_seconds": {str(r): s for r, s in product_seconds.items()}},
                                        indent=1) + "\n")
    if args.plot:
        series = [(f"{r} against {recipes[-1].name}", list(range(1, len(p) + 1)), p, {"marker": None, "lw": 0.8})
                  for r, p in zip(recipes[:-1], pairs[:-1])]
        try:
            save_line_plot(args.plot, series, "step pair", "speed (baseline seconds / seconds)", title=head,
                           hline=1.0)
        except ImportError:
            print(f"matplotlib is not installed: no plot {args.plot}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
