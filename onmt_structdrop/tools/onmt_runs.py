"""Running the stock OpenNMT-py commands, and timing a structured model against its stock twin in alternating
short training runs (A B A B ...), so that a load that comes and goes on the machine hits both alike."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import nmt_speed


def onmt(command: str, *args, cwd: Path, quiet: bool = False, threads: int = None):
    """Run a stock OpenNMT-py command (the installed one, as ``python -m onmt.bin.<command>``)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    return subprocess.run([sys.executable, "-m", f"onmt.bin.{command}", *map(str, args)], cwd=cwd, env=env,
                          check=True, stdout=subprocess.DEVNULL if quiet else None,
                          stderr=subprocess.DEVNULL if quiet else None)


def alternating_speed(cwd: Path, configs: dict, rounds: int, steps: int, threads: int, out: Path = None,
                      stem: str = "structdrop") -> str:
    """Train ``configs["structdrop"]`` and ``configs["baseline"]`` ``steps`` steps per round, alternating, from
    ``cwd``, and table their target tokens/s per round. Logs and checkpoints go to ``out`` (default
    ``cwd/runs/speed``): ``{stem}_rN.log`` and ``{stem}_baseline_rN.log``."""
    out, logs = out or cwd / "runs" / "speed", []
    for rnd in range(1, rounds + 1):
        for name, run in (("structdrop", stem), ("baseline", f"{stem}_baseline")):
            print(f"speed round {rnd}/{rounds}: {name}, {steps} steps, {threads} thread(s)", flush=True)
            log = out / f"{run}_r{rnd}.log"
            onmt("train", "-config", configs[name], "-train_steps", steps, "-valid_steps", 10 ** 9,
                 "-save_checkpoint_steps", 10 ** 9, "-report_every", max(steps // 6, 1), "-save_model",
                 out / run / "model", "-log_file", log, cwd=cwd, quiet=True, threads=threads)
            logs.append(log)
    return nmt_speed.speed_table(logs)
