"""What every task run shares: its directory (log, history, checkpoints, curve plot), seeding and resuming."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import random
import socket
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..plotting import save_line_plot
from ..textfile import atomic_file, write_text

log = logging.getLogger("onmt_structdrop.tasks")

CHECKPOINT = "last.pt"
HISTORY = "history.json"
LOCK = ".lock"


class _ProgressBarFriendlyHandler(logging.StreamHandler):
    """Console lines printed above a running tqdm bar instead of through it."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


class RunLogger:
    """Log lines to ``save_dir/train.log`` (appending, so a resumed run keeps its past) and to the console."""

    def __init__(self, save_dir: Path):
        self.handlers = [logging.FileHandler(save_dir / "train.log", mode="a", encoding="utf-8"),
                         _ProgressBarFriendlyHandler()]

    def __enter__(self):
        for handler in self.handlers:
            handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
            log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        return log

    def __exit__(self, *exc):
        for handler in self.handlers:
            log.removeHandler(handler)
            handler.close()


@contextmanager
def folder_lock(save_dir: Path):
    """Hold ``save_dir/.lock`` while a run owns the folder, so that a second run started there stops at once
    instead of overwriting the first one's checkpoints and history. The lock dies with its process."""
    fd = os.open(save_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = fh.read().strip() or "another process"
            raise FileExistsError(f"{save_dir} is in use by another run ({owner}): wait for it to end, or choose "
                                  f"another save_dir") from None
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        yield


@contextmanager
def run_directory(args):
    """Open a run: ``save_dir`` created and locked, its log attached, torch's thread count set. Yields the logger
    and the run's options as strings (what checkpoints and history.json record)."""
    args.save_dir.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) for k, v in sorted(vars(args).items()) if k != "config"}
    with folder_lock(args.save_dir), RunLogger(args.save_dir) as run_log:
        if args.threads:
            torch.set_num_threads(args.threads)
        yield run_log, config


def optimizer_step(model, opt, loss, max_grad_norm):
    """What every training step of the tasks ends with: back-propagate ``loss``, clip the gradients' global norm
    and step. Returns the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    return loss.item()


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """The random states a resumed run needs to continue as an uninterrupted one would: the CPU's, Python's and,
    on a GPU, the devices' (ordinary dropout and the masks drawn there)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(save_dir: Path, **state):
    """Write ``last.pt`` atomically: a run killed while saving keeps its previous checkpoint."""
    with atomic_file(save_dir / CHECKPOINT, "wb") as fh:
        torch.save(state, fh)


def load_checkpoint(path: Path, keys=("model", "optimizer", "rng", "config", "history", "epoch")):
    """A checkpoint of this package: tensors, numbers, strings and RNG states only, loaded without pickle code.
    Anything else is a ValueError that says what the file is: empty, truncated or not a checkpoint, holding
    objects that would run code, or a checkpoint of something else."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (a run killed while writing it?): delete it to start afresh")
    if not zipfile.is_zipfile(path):  # what torch.save writes; a cut-off one lacks its closing directory
        raise ValueError(f"checkpoint {path} is truncated or not a torch checkpoint at all (torch.save writes a zip "
                         f"archive): delete it to start afresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path} holds objects other than tensors and plain values, which could run "
                         f"code when loaded; refused ({str(err).splitlines()[0]})") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"checkpoint {path} is truncated or not a torch checkpoint at all "
                         f"({str(err).splitlines()[0]})") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a checkpoint of this command (it lacks {', '.join(missing)})")
    return state


def resume_or_start(args, model, opt, model_keys, data, log):
    """``(history, first epoch, checkpoint or None)``: a fresh start, or, with ``-resume true``, the run in
    ``args.save_dir`` restored (parameters, optimizer, random states). ``data`` (vocabularies) and the options
    in ``model_keys`` must be those the checkpoint was trained with; an existing run is never overwritten."""
    checkpoint = args.save_dir / CHECKPOINT
    if not checkpoint.is_file():
        if args.resume:
            raise FileNotFoundError(f"resume: no checkpoint {checkpoint}")
        return [], 1, None
    if not args.resume:
        raise FileExistsError(f"{args.save_dir} already holds a run ({checkpoint}): pass -resume true to continue "
                              f"it, or choose another save_dir")
    state = load_checkpoint(checkpoint)
    other = [k for k in model_keys if k not in state["config"]]
    if other:
        raise ValueError(f"cannot resume {checkpoint}: it is a checkpoint of another model (no {', '.join(other)})")
    changed = [k for k in model_keys if state["config"][k] != str(getattr(args, k))]
    if changed or any(state[k] != v for k, v in data.items()):
        what = ", ".join(f"{k} {state['config'][k]} -> {getattr(args, k)}" for k in changed) or "the training data"
        raise ValueError(f"cannot resume {checkpoint}: {what} changed")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    write_history(args.save_dir, state["history"], state["config"])  # one cut short by a kill is whole again
    log.info("resumed %s after epoch %d", checkpoint, state["epoch"])
    return list(state["history"]), state["epoch"] + 1, state


def write_history(save_dir: Path, history, config):
    write_text(save_dir / HISTORY, json.dumps({"config": config, "epochs": history}, indent=2) + "\n")


def read_history(run_dir: Path):
    path = run_dir / HISTORY
    if not path.is_file():
        raise FileNotFoundError(f"no {HISTORY} in {run_dir}: not a finished or running task run")
    return json.loads(path.read_text())


def plot_curves(path, runs, metrics, ylabel, log_y=False):
    """One line per (run, metric) against the epoch; ``runs``: ``[(label, history, line style)]``. A second
    metric is drawn dashed in the run's colour."""
    series = []
    for label, history, style in runs:
        for metric, extra in zip(metrics, ({}, {"ls": "--", "marker": "x"})):
            points = [(e["epoch"], e[metric]) for e in history if e.get(metric) is not None]
            if points:
                name = label if len(metrics) == 1 else f"{label} {metric.replace('_', ' ')}"
                series.append((name, *zip(*points), {**style, **extra}))
    try:
        save_line_plot(path, series, "epoch", ylabel, log_y=log_y)
    except ImportError:
        log.warning("matplotlib is not installed: no plot %s", path)
