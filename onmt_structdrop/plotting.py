"""Line plots saved as PNG files, for results people would rather see than read."""
from __future__ import annotations

from pathlib import Path

from .textfile import atomic_file


def save_line_plot(path, series, xlabel, ylabel, title=None, log_y=False, hline=None):
    """``series``: ``[(label, xs, ys, style)]`` with matplotlib line ``style`` keywords."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, xs, ys, style in series:
        ax.plot(xs, ys, label=label, **{"marker": "o", **style})
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8)
    if log_y:
        from matplotlib.ticker import NullFormatter, ScalarFormatter
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
