"""The dropout report in OpenNMT-py's training log: after each ``report_every`` report, one line with the share of
the LSTM and generator multiply-adds that structured dropout skipped since the last one, the realised keep rate
of each dropout site and the backends that served (``onmt_structdrop.accounting``), and the same as TensorBoard
scalars under ``structdrop/`` with ``-tensorboard``. Registered by the plugin through the patch set's
``register_training_report``.
"""
from __future__ import annotations

from ..accounting import tally


def report(step, log, tensorboard_writer=None):
    found = tally.take()
    if found is None:  # no structured-dropout model trained since the last report
        return
    keep = ", ".join(f"{site} {rate:.3f}" for site, rate in sorted(found["keep"].items())) or "-"
    backends = ", ".join(f"{name} {calls}" for name, calls in sorted(found["backends"].items())) or "-"
    log("Structured dropout: %.1f%% of LSTM and generator multiply-adds skipped; keep rate: %s; "
        "backend calls: %s", 100 * found["skipped"], keep, backends)
    if tensorboard_writer is not None:
        tensorboard_writer.add_scalar("structdrop/skipped_share", found["skipped"], step)
        for site, rate in found["keep"].items():
            tensorboard_writer.add_scalar(f"structdrop/keep_rate/{site.replace(' ', '_')}", rate, step)
