"""``onmt-structdrop-patch apply|check|revert``: the patch set of :mod:`onmt_structdrop.opennmt.patches` on the
installed OpenNMT-py."""
from __future__ import annotations

import argparse
import sys

from ..opennmt.patches import APPLY_HINT, ONMT_VERSION, PatchError, apply, states


def main(argv=None):
    parser = argparse.ArgumentParser(prog="onmt-structdrop-patch",
                                     description=f"Apply, check or revert the patch set for OpenNMT-py {ONMT_VERSION}.")
    parser.add_argument("action", choices=["apply", "check", "revert"])
    args = parser.parse_args(argv)
    try:
        if args.action == "check":
            root, found = states()
            for fp, state in found:
                print(f"{state:9s} {fp.path}")
            if any(state != "patched" for _, state in found):
                print(f"OpenNMT-py at {root} is not fully patched: {APPLY_HINT}", file=sys.stderr)
                return 1
            print(f"OpenNMT-py at {root} is patched")
            return 0
        changed = apply(reverse=args.action == "revert")
        verb = "patched" if args.action == "apply" else "restored"
        print(f"{verb}: {', '.join(changed)}" if changed else f"nothing to do: already {verb}")
        return 0
    except PatchError as err:
        print(f"onmt-structdrop-patch: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
