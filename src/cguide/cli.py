"""What the Hydra entry points share: where conf/ is, and bad input reported as one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

# Absolute: entry points also work when imported (tests), not only under `python -m`.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def run_or_exit(fn: Callable, *args):
    """Call fn; a bad input becomes `error: <one line>` on stderr and exit code 2, not a traceback."""
    try:
        return fn(*args)
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
