"""Recipes: a YAML file of options, overridable on the command line (``-config FILE -epochs 2``).

Every key of a recipe must be a known option: a misspelt key is an error naming the file and the key, never
silently ignored.
"""
from __future__ import annotations

import argparse
import difflib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml

from .. import ops
from ..masks import MASK_MODES, check_rate
from ..textfile import read_text


@dataclass(frozen=True)
class Option:
    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    choices: Optional[Sequence[Any]] = None


def boolean(text):
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(str(text).lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def optional_int(text):
    return None if str(text).lower() in ("none", "null", "") else int(text)


COMPACT_OUTPUT = Option(
    "compact_output", str, "auto", "skip the dropped inputs' share of the output layer's product: auto = where the "
    "backend that serves it finds that it pays (onmt_structdrop.ops.choose; e.g. one product on the kept units in "
    "batch mode, the native engine's kernels in time mode on the CPU), false = multiply by the masks (same results)",
    ("auto", "false"))


DROPOUT_OPTIONS = [
    Option("dropout_impl", str, "structured", "structured dropout, or standard (nn.Dropout + nn.LSTM)",
           ("structured", "standard")),
    Option("mask_mode", str, "time", "structured mask mode (see onmt_structdrop.masks)", MASK_MODES),
    COMPACT_OUTPUT,
    Option("dropout", float, 0.0, "dropout on the embeddings, between layers and before the output layer"),
    Option("recurrent_dropout", float, 0.0, "dropout on h(t-1)"),
]
RUN_OPTIONS = [
    Option("max_grad_norm", float, 5.0, "gradient clipping (global norm)"),
    Option("max_steps_per_epoch", optional_int, None, "stop each epoch early (for smoke tests)"),
    Option("seed", int, 1, "seed of the parameters, masks, batches and everything random"),
    Option("threads", optional_int, None, "torch CPU threads (default: torch's choice)"),
    Option("device", str, "cpu", "cpu or cuda"),
    Option("resume", boolean, False, "continue the run in save_dir from its last.pt"),
    Option("debug", boolean, False, "on an error, show the traceback as well as its one-line message"),
]


def compacts_output(args):
    """Whether the output layer is given packed masks (the seam then compacts where it pays)."""
    return args.compact_output == "auto"


def build_parser(prog, description, options):
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-config", "--config", type=Path, help="YAML recipe; command-line options override it")
    for opt in options:
        parser.add_argument(f"-{opt.name}", f"--{opt.name}", type=opt.type, default=opt.default,
                            choices=opt.choices, help=opt.help)
    return parser


def read_recipe(path: Path, options) -> dict:
    """The options a YAML recipe sets, each converted and checked like its command-line form."""
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        values = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of option: value, got {type(values).__name__}")
    known = {opt.name: opt for opt in options}
    out = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ValueError(f"{path}: unknown key {key!r}{hint}")
        try:
            value = _convert(known[key], value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"{path}: {key}: {err}") from None
        opt = known[key]
        if opt.choices is not None and value not in opt.choices:
            raise ValueError(f"{path}: {key} must be one of {', '.join(map(str, opt.choices))}, got {value!r}")
        out[key] = value
    return out


def _convert(opt, value):
    """A YAML value as the option's type; strings go through the command-line conversion."""
    if value is None and opt.default is None:  # an optional setting left unset
        return None
    if isinstance(value, str):
        return opt.type(value)
    expected = {int: (int,), optional_int: (int,), float: (int, float), boolean: (bool,)}.get(opt.type, ())
    if isinstance(value, bool) != (opt.type is boolean) or not isinstance(value, expected):
        raise ValueError(f"expected {getattr(opt.type, '__name__', 'a value')}, got {value!r}")
    return opt.type(value)


def parse_options(parser, options, argv=None):
    """Command line over recipe over defaults; a bad recipe exits with its message, like a bad flag."""
    first, _ = parser.parse_known_args(argv)
    if first.config is not None:
        try:
            parser.set_defaults(**read_recipe(first.config, options))
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
    return parser.parse_args(argv)


def check_values(parser, args, at_least_one=(), positive=(), non_negative=(), rates=()):
    """Exit with a message naming the first option whose value is out of range."""
    for name in at_least_one:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    for name in positive:
        if not 0 < getattr(args, name) < math.inf:
            parser.error(f"{name} must be > 0 (and finite), got {getattr(args, name)}")
    for name in non_negative:
        if not 0 <= getattr(args, name) < math.inf:
            parser.error(f"{name} must be >= 0 (and finite), got {getattr(args, name)}")
    for name in rates:
        try:
            check_rate(getattr(args, name), name)
        except ValueError as err:
            parser.error(str(err))
    try:
        ops.check_environment()
    except ValueError as err:
        parser.error(str(err))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"device {args.device!r}: no CUDA device is available")


def parse_command(prog, description, options, argv=None, at_least_one=(), positive=(), non_negative=()):
    """A task's options: recipe and command line parsed and checked (the shared dropout and run options
    included); a bad value exits with its message."""
    parser = build_parser(prog, description, options)
    args = parse_options(parser, options, argv)
    check_values(parser, args, at_least_one=(*at_least_one, "max_steps_per_epoch", "threads"),
                 positive=(*positive, "max_grad_norm"), non_negative=non_negative,
                 rates=("dropout", "recurrent_dropout"))
    return args


def run_command(prog, parse, run, argv=None):
    """A task's command line: ``parse(argv)`` (see :func:`parse_command`), then ``run(args)``. Missing or malformed
    data, a checkpoint that cannot be resumed and an occupied save_dir exit with status 2 and their one-line
    message."""
    args = parse(argv)
    try:
        return run(args)
    except (OSError, ValueError) as err:  # bad input: one line (-debug true adds the traceback)
        if args.debug:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
