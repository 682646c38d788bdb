"""OpenNMT-py 3.5.1 plugin: encoders ``sd_rnn``/``sd_brnn``, decoders ``sd_rnn``/``sd_ifrnn`` and their options.

OpenNMT-py finds it through the entry point ``onmt.plugins: structdrop`` once the patch set is applied
(``onmt-structdrop-patch apply``); :func:`register` is that entry point.
"""
from __future__ import annotations

def require_patched_onmt():
    """Raise with the command to run when OpenNMT-py lacks the patch set (checked without importing onmt)."""
    from .patches import APPLY_HINT, PatchError, is_applied
    try:
        applied = is_applied()
    except PatchError as err:
        raise RuntimeError(str(err)) from None
    if not applied:
        raise RuntimeError(f"OpenNMT-py is not patched for onmt-structdrop: {APPLY_HINT}")


def register():
    """Register the encoders, decoders and options with OpenNMT-py (idempotent).

    Importing the encoder and decoder modules registers their classes; when this runs while one of them is
    itself being imported (it imports onmt, which loads its plugins), that module registers its classes as
    soon as it is complete.
    """
    import onmt.plugins
    from onmt.utils.report_manager import register_training_report

    from . import decoders, encoders, options, report

    onmt.plugins.register_opts(options.add_opts)
    register_training_report(report.report)
