"""The plugin's OpenNMT-py options, added to ``model_opts`` so that they are parsed from YAML and the command line,
checked at start-up and saved in checkpoints.

The non-recurrent rate is OpenNMT's own ``dropout`` (with ``dropout_steps``); these options add the rest.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib

import torch
from onmt.utils.errors import InputError

from .. import ops
from ..accounting import tally
from ..masks import MASK_MODES, PatternOptions, check_rate, sample_mask

DEFAULTS = {"sd_recurrent_dropout": [0.0], "sd_mask_mode": "time", "sd_pool_size": 0, "sd_seed": -1,
            "sd_compact": True, "sd_dp_max": 8, "sd_tile_size": 0, "sd_pattern_lambda": 1e-4,
            "sd_pattern_per_batch": False}


def _rate(text):
    """argparse type: a dropout rate in [0, 1), the error naming the bad value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        return check_rate(value, "sd_recurrent_dropout")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _bool(text):
    if isinstance(text, bool):
        return text
    if str(text).lower() in ("true", "1", "yes"):
        return True
    if str(text).lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text):
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_opts(parser):
    group = parser.add_argument_group("Structured dropout (onmt-structdrop: encoder/decoder types sd_rnn, sd_brnn, "
                                      "sd_ifrnn)")
    group.add_argument("--sd_recurrent_dropout", "-sd_recurrent_dropout", type=_rate, nargs="+",
                       default=DEFAULTS["sd_recurrent_dropout"],
                       help="Structured dropout rate on h(t-1) of every LSTM layer: one value, or one per entry "
                            "of -dropout (it then follows -dropout_steps).")
    group.add_argument("--sd_mask_mode", "-sd_mask_mode", choices=list(MASK_MODES), default=DEFAULTS["sd_mask_mode"],
                       help="Which units are dropped: 'time' (a fresh set per step, shared by the batch), 'pool' "
                            "(each step picks one of a few sets drawn per batch), 'batch' (one set per batch), "
                            "'rbd'/'tbd' (approximate random dropout: one unit/tile of every dp kept), "
                            "'bernoulli' (ordinary dropout, nothing skipped).")
    group.add_argument("--sd_pool_size", "-sd_pool_size", type=_non_negative_int, default=DEFAULTS["sd_pool_size"],
                       help="Kept sets per batch in 'pool' mode; 0 picks ceil(1 / min(p, 1 - p)).")
    group.add_argument("--sd_seed", "-sd_seed", type=int, default=DEFAULTS["sd_seed"],
                       help="Seed of the dropout masks' own random generator; -1 draws them from torch's global "
                            "generator (seeded by -seed).")
    group.add_argument("--sd_dp_max", "-sd_dp_max", type=_positive_int, default=DEFAULTS["sd_dp_max"],
                       help="'rbd'/'tbd': the largest pattern period dp (one unit or tile of every dp kept).")
    group.add_argument("--sd_tile_size", "-sd_tile_size", type=_non_negative_int, default=DEFAULTS["sd_tile_size"],
                       help="'tbd': units per tile; 0 picks the largest power of two up to 32 dividing the width.")
    group.add_argument("--sd_pattern_lambda", "-sd_pattern_lambda", type=_non_negative_float,
                       default=DEFAULTS["sd_pattern_lambda"],
                       help="'rbd'/'tbd': entropy weight of the search for the distribution of dp.")
    group.add_argument("--sd_pattern_per_batch", "-sd_pattern_per_batch", type=_bool,
                       default=DEFAULTS["sd_pattern_per_batch"],
                       help="'rbd'/'tbd': draw one pattern per batch instead of one per step.")
    group.add_argument("--sd_compact", "-sd_compact", type=_bool, default=DEFAULTS["sd_compact"],
                       help="Skip the dropped units' work (true) or multiply by the same masks (false, for "
                            "comparison).")
    refuse_unknown_options(parser, sorted(DEFAULTS))
    check_when_parsed(parser)


def refuse_unknown_options(parser, names):
    """Make ``parser`` refuse any ``-sd_*`` option (or YAML key, which configargparse turns into one) that is not
    exactly one of ``names``, in any other spelling too (``--sd-mask-mode``, ``SD_MASK_MODE``). OpenNMT-py parses
    with ``parse_known_args``, which ignores unknown options, and argparse takes a prefix of an option for the
    option: a misspelt ``-sd_recurent_dropout`` would silently train without recurrent dropout, and
    ``sd_mask_mod`` would mean ``sd_mask_mode``. One line, close matches, exit 2. The names given are kept in
    ``parser.sd_options_given`` (see :func:`check_when_parsed`)."""
    parse_optional = parser._parse_optional  # argparse's one entry for every option string it reads
    parser.sd_options_given = set()

    def checked(arg_string):
        name = arg_string.lstrip("-").split("=", 1)[0]
        spelt = name.lower().replace("-", "_")
        if arg_string.startswith("-") and spelt.startswith("sd_"):
            if name not in names:
                close = difflib.get_close_matches(spelt, names, n=2, cutoff=0.6)
                hint = (f"did you mean {' or '.join('-' + c for c in close)}?" if close
                        else f"the structured-dropout options are {', '.join('-' + n for n in names)}")
                shown = f"-{name}" if name == spelt else arg_string.split("=", 1)[0]  # another spelling as given
                parser.exit(2, f"{parser.prog}: error: unknown option {shown} (on the command line or as a config "
                               f"key): {hint}\n")
            parser.sd_options_given.add(name)
        return parse_optional(arg_string)

    parser._parse_optional = checked


ENCODERS, DECODERS = ("sd_rnn", "sd_brnn"), ("sd_rnn", "sd_ifrnn")


def check_when_parsed(parser):
    """Run :func:`check` on what ``parser`` parses for a model with the plugin's encoder or decoder, so that a
    bad combination stops ``onmt_train`` at start-up with one line (exit 2) instead of a traceback from deep in
    the model builder."""
    parse_known_args = parser.parse_known_args

    def checked(*args, **kwargs):
        parser.sd_options_given.clear()
        opt, rest = parse_known_args(*args, **kwargs)
        encoder, decoder = getattr(opt, "encoder_type", None), getattr(opt, "decoder_type", None)
        try:
            for kind, name, known in (("encoder_type", encoder, ENCODERS), ("decoder_type", decoder, DECODERS)):
                if isinstance(name, str) and name.startswith("sd_") and name not in known:
                    raise ValueError(f"unknown {kind} {name!r}; the structured-dropout ones are {', '.join(known)}")
            if encoder in ENCODERS or decoder in DECODERS:
                check(opt)
            elif parser.sd_options_given and not getattr(opt, "train_from", None):
                given = ", ".join(f"-{n}" for n in sorted(parser.sd_options_given))
                raise ValueError(f"{given} apply to the structured-dropout models only, but this one is "
                                 f"{encoder} + {decoder}: set encoder_type sd_brnn or sd_rnn and decoder_type sd_ifrnn "
                                 f"or sd_rnn, or remove them")
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        return opt, rest

    parser.parse_known_args = checked


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def check(opt):
    """Raise ValueError for option combinations argparse cannot see, and for the package's environment variables
    (run when the options are parsed, and when a model is built)."""
    ops.check_environment()
    rates = list(getattr(opt, "sd_recurrent_dropout", DEFAULTS["sd_recurrent_dropout"]))
    dropout = opt.dropout if isinstance(opt.dropout, (list, tuple)) else [opt.dropout]
    if len(rates) not in (1, len(dropout)):
        raise ValueError(f"sd_recurrent_dropout needs one value or one per dropout entry ({len(dropout)}), "
                         f"got {rates}")
    for rate in rates:
        check_rate(rate, "sd_recurrent_dropout")
    for rate in dropout:
        check_rate(rate, "dropout")
    if getattr(opt, "sd_mask_mode", "pool") in ("rbd", "tbd"):
        from ..masks import pattern_distribution
        for rate in set(rates) | set(dropout):
            if rate > 0:
                pattern_distribution(rate, getattr(opt, "sd_dp_max", 8), getattr(opt, "sd_pattern_lambda", 1e-4))
    if getattr(opt, "rnn_type", "LSTM") != "LSTM":
        raise ValueError(f"structured dropout encoders and decoders are LSTMs; rnn_type must be LSTM, "
                         f"got {opt.rnn_type!r}")
    decoder = getattr(opt, "decoder_type", None)
    if decoder == "sd_rnn" and (getattr(opt, "copy_attn", False) or getattr(opt, "coverage_attn", False)):
        raise ValueError("sd_rnn, like OpenNMT's rnn decoder without input feed, supports neither copy_attn nor "
                         "coverage_attn; use sd_ifrnn")
    if decoder == "sd_ifrnn" and getattr(opt, "context_gate", None) is not None:
        raise ValueError("sd_ifrnn does not support context_gate (the stock ifrnn decoder does)")


class OptionError(InputError, ValueError):
    """Options that cannot build the model: OpenNMT-py's one-line InputError, and a ValueError."""


@contextlib.contextmanager
def built_from_options():
    """A module built from the options: a ValueError there (what no check at parse time sees, such as a tile size
    that does not divide a layer's width) becomes OpenNMT-py's InputError, one line from the command."""
    try:
        yield
    except ValueError as err:
        raise OptionError(str(err)) from None


class Settings:
    """The structured-dropout settings of one encoder or decoder, and their schedule over ``dropout_steps``."""

    def __init__(self, opt):
        if not hasattr(opt, "sd_mask_mode"):  # the options were never parsed: is OpenNMT-py patched?
            from . import require_patched_onmt
            require_patched_onmt()
        check(opt)
        tally.enabled = True  # a structured model is built: count what it skips for the training report
        get = lambda name: getattr(opt, name, DEFAULTS[name])  # noqa: E731
        self.dropout = float(_first(opt.dropout))
        self.recurrent_schedule = [float(r) for r in get("sd_recurrent_dropout")]
        self.recurrent_dropout = self.recurrent_schedule[0]
        self.mask_mode = get("sd_mask_mode")
        self.pool_size = get("sd_pool_size") or None
        self.seed = get("sd_seed")
        self.compact = bool(get("sd_compact"))
        self.pattern = PatternOptions(get("sd_dp_max"), float(get("sd_pattern_lambda")), get("sd_tile_size") or None,
                                      bool(get("sd_pattern_per_batch")))
        self._phase = 0

    def sample(self, p, n, T, B, generator=None, device="cpu", dtype=torch.float32):
        """A mask over ``T`` steps and ``n`` units for a batch of ``B`` (None when ``p`` is 0), in the form the
        products compute with (:func:`onmt_structdrop.ops.prepare`): packed to compact, a dense tensor with
        ``compact`` off or in bernoulli mode; a compacted ``time`` mask for a device that draws its own is drawn there
        (:func:`onmt_structdrop.ops.draws_own_masks`)."""
        if p > 0 and ops.draws_own_masks(self.mask_mode, self.compact, device):
            return ops.draw_time(p, n, T, device, ops.device_generator(generator, device))
        mask = sample_mask(self.mask_mode, p, n, T, batch=B, generator=generator, pool_size=self.pool_size,
                           pattern=self.pattern)
        return ops.prepare(mask, device, dtype, self.compact)

    def lstm_kwargs(self):
        return {"dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout, "mask_mode": self.mask_mode,
                "pool_size": self.pool_size, "compact": self.compact, "pattern": self.pattern}

    def next_phase(self, dropout):
        """``update_dropout`` is called once per ``dropout_steps`` boundary, in order: move to the next phase."""
        self._phase += 1
        self.dropout = float(dropout)
        if len(self.recurrent_schedule) > 1:
            self.recurrent_dropout = self.recurrent_schedule[min(self._phase, len(self.recurrent_schedule) - 1)]
