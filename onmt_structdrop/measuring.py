"""Timing on a device, for the benchmarks and the tasks' speed comparison: callables timed round-robin with their
median, the device's name as a report states it, and the full-width products that an ideal ratio is made of."""
from __future__ import annotations

import platform
import statistics
import time

import torch
from tqdm import tqdm


def cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device):
    """The device, and on CUDA whether float32 products may run on TF32 tensor cores (torch's switches)."""
    if device.type != "cuda":
        return f"{cpu_name()}, {torch.get_num_threads()} threads"
    on_off = lambda flag: "on" if flag else "off"  # noqa: E731
    return (f"{torch.cuda.get_device_name(device)} (float32 products on TF32: cuBLAS "
            f"{on_off(torch.backends.cuda.matmul.allow_tf32)}, cuDNN {on_off(torch.backends.cudnn.allow_tf32)})")


def time_callables(runs, repeats, warmup, device):
    """Median seconds of each callable in ``runs`` (name -> callable), warmed up, then run round-robin so that
    machine noise hits all alike; with peak GPU memory per name on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in runs}
    peaks = {}
    for run in runs.values():
        for _ in range(warmup):
            run()
    for _ in tqdm(range(repeats), desc="timing", leave=False, disable=None):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
    return {name: statistics.median(ts) for name, ts in times.items()}, peaks


def full_width_products(shapes, device, seed=0):
    """A callable running, for each ``(m, n, o, repeats)`` of ``shapes``, an ``m x n`` activation times an
    ``n x o`` weight with its input and weight gradients, ``repeats`` times, at full width: the products dropout
    can shrink, timed as the stock model runs them, for the ideal rows of the benchmarks."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    operands = [(rand(m, n), rand(n, o), rand(m, o), reps) for m, n, o, reps in shapes]

    def run():
        for a, w, dy, reps in operands:
            for _ in range(reps):
                a @ w
                dy @ w.t()
                a.t() @ dy

    return run
