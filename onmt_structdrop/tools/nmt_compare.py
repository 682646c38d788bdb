"""Compare an OpenNMT-py config that uses structured dropout with its stock twin, in one command: write the twin
(the same config with the stock LSTM: ``brnn``/``rnn`` for ``sd_brnn``/``sd_rnn``, input-feed ``rnn`` for
``sd_ifrnn``, no ``sd_*`` options, its outputs in a ``stock/`` folder beside the config's), build the vocabulary
if the config's is missing, train both, translate the test set with each and score it with sacreBLEU.

    python -m onmt_structdrop.tools.nmt_compare my_config.yaml --test-src data/test.de --test-ref data/test.en

The table gives each model's test BLEU, then their training tokens/s from ``--speed-rounds`` alternating short
runs of each (default 3; ``--speed-steps`` steps, ``--threads`` threads), so that a load that comes and goes
on the machine hits both alike (the full runs follow each other, and their speeds are not compared);
``--speed-rounds 0`` skips the timing. Each model's training log goes beside its checkpoints (``train.log``)
unless the config names a ``log_file``. A ``save_model`` that already holds checkpoints is refused: they would
be scored in place of the new ones.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml

from ..textfile import write_text

from . import nmt_evaluate as evaluate
from .onmt_runs import alternating_speed, onmt

STOCK_TYPES = {"sd_brnn": ("brnn", None), "sd_rnn": ("rnn", 0), "sd_ifrnn": ("rnn", 1)}  # type, input_feed
OUTPUT_PATHS = ("save_model", "log_file", "save_data", "tensorboard_log_dir")


def stock_twin(config: dict) -> dict:
    """The stock OpenNMT-py twin of a structured-dropout config (see the module's docstring)."""
    if config.get("encoder_type") not in STOCK_TYPES and config.get("decoder_type") not in STOCK_TYPES:
        raise ValueError(f"neither encoder_type ({config.get('encoder_type')}) nor decoder_type "
                         f"({config.get('decoder_type')}) is a structured-dropout one ({', '.join(STOCK_TYPES)}): "
                         f"there is no twin to compare with")
    twin = {key: value for key, value in config.items() if not key.startswith("sd_")}
    for key in ("encoder_type", "decoder_type"):
        kind, input_feed = STOCK_TYPES.get(config.get(key), (config.get(key), None))
        twin[key] = kind
        if key == "decoder_type" and input_feed is not None:
            twin["input_feed"] = input_feed
    for key in OUTPUT_PATHS:
        if key in twin:
            path = Path(twin[key])
            twin[key] = str(path.parent / "stock" / path.name)
    return twin


def read_config(config_path: Path) -> dict:
    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} is not an onmt_train config (a YAML mapping of options)")
    return config


def write_twin(config_path: Path, config: dict) -> Path:
    """The stock twin of ``config`` (read from ``config_path``) written beside its checkpoints; its path."""
    twin = stock_twin(config)
    path = Path(twin["save_model"]).parent / f"{config_path.stem}_stock.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, f"# The stock twin of {config_path} (python -m onmt_structdrop.tools.nmt_compare)\n"
                    + yaml.safe_dump(twin, sort_keys=False))
    return path


def check_outputs(config_path: Path, config: dict):
    """``config`` names a ``save_model`` that holds no checkpoints yet (nor does its twin's)."""
    if not isinstance(config.get("save_model"), str):
        raise ValueError(f"{config_path} has no save_model: set one (e.g. save_model: run/model) so that the two "
                         f"models' checkpoints have a place of their own")
    for save_model in (config["save_model"], stock_twin(config)["save_model"]):
        base = Path(save_model)
        found = sorted(base.parent.glob(base.name + "_step_*.pt"))
        if found:
            raise ValueError(f"{found[0]} is a checkpoint of an earlier run, which would be scored in place of this "
                             f"run's: move {base.parent} away, or set another save_model in {config_path}")


def log_file(config: dict) -> Path:
    """Where a model's training log goes: the config's ``log_file``, or ``train.log`` beside its checkpoints."""
    return Path(config.get("log_file") or Path(config["save_model"]).parent / "train.log")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="an onmt_train config with sd_* encoder or decoder types")
    parser.add_argument("--test-src", type=Path, default=None,
                        help="source side of the test set (default: test.src beside the training data)")
    parser.add_argument("--test-ref", type=Path, default=None,
                        help="its references (default: test.ref beside the training data)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--speed-rounds", type=int, default=3,
                        help="alternating timed rounds of each model (0: no timing, no speed printed)")
    parser.add_argument("--speed-steps", type=int, default=100, help="training steps of each model per round")
    parser.add_argument("--threads", type=int, default=1, help="threads of each timed run (OMP_NUM_THREADS)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"config {args.config} not found")
    for name in ("beam", "speed_steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.speed_rounds < 0:
        parser.error(f"--speed-rounds must be >= 0, got {args.speed_rounds}")
    try:
        config = read_config(args.config)
        check_outputs(args.config, config)
        twin = write_twin(args.config, config)
    except (ValueError, yaml.YAMLError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"stock twin: {twin}", flush=True)
    logs = [log_file(config), log_file(stock_twin(config))]
    try:
        if not Path(config.get("src_vocab", "")).is_file():
            onmt("build_vocab", "-config", args.config, "-n_sample", "-1", cwd=Path.cwd())
        for path, log in zip((args.config, twin), logs):
            print(f"training {path} (log: {log})", flush=True)
            onmt("train", "-config", path, "-log_file", log, cwd=Path.cwd())
    except subprocess.CalledProcessError as err:
        command = err.cmd[2].replace("onmt.bin.", "onmt_")
        parser.exit(1, f"{parser.prog}: error: {command} failed (exit {err.returncode}); its messages are above\n")
    results = [evaluate.evaluate(path, args.beam, log, src=args.test_src, ref=args.test_ref)
               for path, log in zip((args.config, twin), logs)]
    out = Path(config["save_model"]).parent / "comparison"
    table = evaluate.comparison_table(results, speed=False)
    if args.speed_rounds:
        speed = alternating_speed(Path.cwd(), {"structdrop": args.config, "baseline": twin}, args.speed_rounds,
                                  args.speed_steps, args.threads, out=out.parent / "speed", stem=args.config.stem)
        table += (f"\n\nTraining speed (target tokens/s): {args.speed_rounds} alternating rounds of "
                  f"{args.speed_steps} steps per model, {args.threads} thread(s) each.\n\n{speed}")
    print(table)
    write_text(out.with_suffix(".md"), table + "\n")
    write_text(out.with_suffix(".json"), json.dumps(results, indent=1))
    print(f"written to {out}.md and {out}.json")


if __name__ == "__main__":
    main()
