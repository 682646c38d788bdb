"""Evaluate recipes: translate the test set with the last checkpoint, detokenise, score with sacreBLEU, and read
training speed (tokens/s) and validation perplexity from the training log.

    python -m onmt_structdrop.tools.nmt_evaluate --config recipes/multi30k_deen.yaml \
        --config recipes/multi30k_deen_baseline.yaml --plot runs/multi30k_valid_ppl.png

Each recipe's results go to ``eval.json`` beside its checkpoints; with several recipes a table compares them to
the last one given (the baseline): BLEU difference and speed ratio.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from ..textfile import read_lines, write_text

from .nmt_prepare import make_tokenizer

_STEP = re.compile(r"Step\s+(\d+)/\s*\d+;.*?(\d+)/\s*(\d+) tok/s")
_VALID = re.compile(r"Validation perplexity: ([\d.]+)")
_CKPT = re.compile(r"_step_(\d+)\.pt$")


def read_recipe(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"recipe {path} not found")
    return yaml.safe_load(path.read_text())


def checkpoints(save_model) -> dict:
    """``{step: path}`` of the checkpoints ``<save_model>_step_<N>.pt``."""
    base = Path(save_model)
    found = {int(_CKPT.search(p.name).group(1)): p for p in base.parent.glob(base.name + "_step_*.pt")}
    if not found:
        raise SystemExit(f"no checkpoint {base}_step_*.pt: train first")
    return dict(sorted(found.items()))


def last_checkpoint(save_model) -> Path:
    return list(checkpoints(save_model).values())[-1]


def best_checkpoint(save_model, valid_ppl) -> Path:
    """The checkpoint of the step with the lowest validation perplexity among those saved (``valid_ppl``:
    ``[(step, ppl)]`` from the log), as for a run that early stopping ended past its best."""
    saved = checkpoints(save_model)
    scored = [(ppl, step) for step, ppl in valid_ppl if step in saved]
    if not scored:
        raise SystemExit(f"no validation perplexity in the log at a saved step of {save_model}")
    return saved[min(scored)[1]]


def validations(lines) -> list:
    """``[(step, perplexity)]`` of an ``onmt_train`` log's validations, each at the step reported last before it. A
    run resumed from a checkpoint logs its steps again: a later validation replaces those of its step and after."""
    valid, last_step = [], 0
    for line in lines:
        m = _STEP.search(line)
        if m:
            last_step = int(m.group(1))
            continue
        m = _VALID.search(line)
        if m:
            valid = [(step, ppl) for step, ppl in valid if step < last_step] + [(last_step, float(m.group(1)))]
    return valid


def training_log(path: Path, skip_first: int = 1) -> dict:
    """Tokens/s (source, target; median of the report lines after the first ``skip_first``) and the
    validation perplexities in order, from an ``onmt_train`` log."""
    if not path.is_file():
        raise SystemExit(f"training log {path} not found (log_file in the recipe)")
    lines = read_lines(path)
    reports = [m for m in map(_STEP.search, lines) if m]
    steps = [int(m.group(1)) for m in reports]
    src, tgt = [int(m.group(2)) for m in reports], [int(m.group(3)) for m in reports]
    valid = validations(lines)
    if len(steps) <= skip_first:
        raise SystemExit(f"{path}: not enough 'Step ... tok/s' report lines")
    return {"src_tok_s": statistics.median(src[skip_first:]), "tgt_tok_s": statistics.median(tgt[skip_first:]),
            "valid_ppl": valid, "steps": steps[-1]}


SUBWORD_TRANSFORMS = ("sentencepiece", "onmt_tokenize", "bpe")
_SUBWORD_OPTIONS = ("src_subword_", "tgt_subword_", "src_onmttok_", "tgt_onmttok_")


def subword_options(recipe: dict) -> list:
    """``onmt_translate`` options that apply the recipe's subword transforms (and only those: a length filter
    must not drop test sentences), so that it reads plain text and writes detokenised text; [] without them."""
    transforms = [t for t in recipe.get("transforms") or [] if t in SUBWORD_TRANSFORMS]
    if not transforms:
        return []
    args = ["-transforms", *transforms]
    for key, value in recipe.items():
        if key.startswith(_SUBWORD_OPTIONS):
            args += [f"-{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return args


def translate_and_score(recipe: dict, checkpoint: Path, out_dir: Path, beam: int = 5, src: Path = None,
                        ref: Path = None) -> dict:
    """Translate ``src`` (default: the test set beside the training data) and score it against ``ref`` with
    sacreBLEU: detokenised by the recipe's transforms, or by nmt_prepare's tokenizer for pre-tokenised data."""
    import sacrebleu
    data_dir = Path(recipe["data"]["corpus_1"]["path_src"]).parent
    src, ref = src or data_dir / "test.src", ref or data_dir / "test.ref"
    transforms = subword_options(recipe)
    for path in (src, ref) + (() if transforms else (data_dir / "tokenizer.json",)):
        if not path.is_file():
            raise SystemExit(f"{path} not found: run python -m onmt_structdrop.tools.nmt_prepare first")
    pred = out_dir / ("test.pred" if transforms else "test.pred.tok")
    subprocess.run([sys.executable, "-m", "onmt.bin.translate", "-model", str(checkpoint), "-src", str(src),
                    "-output", str(pred), "-beam_size", str(beam), "-batch_size", "32", "-max_length", "200",
                    *transforms], check=True)
    hyps = read_lines(pred)
    if not transforms:
        tokenizer = make_tokenizer(data_dir)
        hyps = [tokenizer.detokenize(line.split()) for line in hyps]
        write_text(out_dir / "test.pred", "".join(h + "\n" for h in hyps))
    refs = read_lines(ref)
    if len(hyps) != len(refs):
        raise SystemExit(f"{pred} has {len(hyps)} lines for {len(refs)} references in {ref}")
    metric = sacrebleu.BLEU()
    score = metric.corpus_score(hyps, [refs])
    return {"bleu": round(score.score, 2), "bleu_signature": str(metric.get_signature()), "bleu_detail": str(score)}


def evaluate(config: Path, beam: int = 5, log: Path = None, src: Path = None, ref: Path = None, run: Path = None,
             pick: str = "last") -> dict:
    """Score recipe ``config``'s checkpoint (``pick``: the ``last``, or the ``best`` by validation perplexity) of
    its ``save_model``, or of the run folder ``run`` (its ``model_step_*.pt`` and ``train.log``)."""
    recipe = read_recipe(config)
    save_model = run / "model" if run else recipe["save_model"]
    train = training_log(log or (run / "train.log" if run else Path(recipe["log_file"])))
    checkpoint = best_checkpoint(save_model, train["valid_ppl"]) if pick == "best" else last_checkpoint(save_model)
    out_dir = checkpoint.parent
    result = {"recipe": str(config), "checkpoint": str(checkpoint),
              "encoder_type": recipe.get("encoder_type"), "decoder_type": recipe.get("decoder_type"), **train,
              **translate_and_score(recipe, checkpoint, out_dir, beam, src, ref)}
    write_text(out_dir / "eval.json", json.dumps(result, indent=1))
    return result


def comparison_table(results, speed: bool = True) -> str:
    """BLEU of each result against the last one's, and (``speed``) the tokens/s of their training logs."""
    base = results[-1]
    head = "| recipe | encoder / decoder | steps | test BLEU | vs baseline |"
    lines = [head + (" src tok/s | tgt tok/s | speed ratio |" if speed else ""),
             "|---" * (5 + 3 * speed) + "|"]
    for r in results:
        line = (f"| {Path(r['recipe']).stem} | {r['encoder_type']} / {r['decoder_type']} | {r['steps']} | "
                f"{r['bleu']:.2f} | {r['bleu'] - base['bleu']:+.2f} |")
        if speed:
            line += f" {r['src_tok_s']:.0f} | {r['tgt_tok_s']:.0f} | {r['tgt_tok_s'] / base['tgt_tok_s']:.2f}x |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, action="append", required=True,
                        help="a recipe (repeat; the last one is the baseline of the comparison)")
    parser.add_argument("--log", type=Path, action="append", default=None,
                        help="training log of each --config, in order (default: the recipe's log_file)")
    parser.add_argument("--run", type=Path, action="append", default=None,
                        help="run folder of each --config, in order (its model_step_*.pt and train.log), for runs "
                             "saved elsewhere than the recipe's save_model (scripts/full_runs.sh's)")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last",
                        help="which checkpoint to score: the last, or the best by validation perplexity")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of validation perplexity against step")
    args = parser.parse_args(argv)
    logs, runs = args.log or [None] * len(args.config), args.run or [None] * len(args.config)
    for name, given in (("--log", logs), ("--run", runs)):
        if len(given) != len(args.config):
            parser.error(f"give one {name} per --config ({len(args.config)}), got {len(given)}")
    results = [evaluate(config, args.beam, log, run=run, pick=args.checkpoint)
               for config, log, run in zip(args.config, logs, runs)]
    print(comparison_table(results))
    if args.plot:
        from ..plotting import save_line_plot
        series = [(Path(r["recipe"]).stem, [s for s, _ in r["valid_ppl"]], [p for _, p in r["valid_ppl"]], {})
                  for r in results if r["valid_ppl"]]
        save_line_plot(args.plot, series, "training step", "validation perplexity", log_y=True)


if __name__ == "__main__":
    main()
