"""Sizes checked against this machine's memory before anything is allocated: a number typed a few digits too
long (sweep.n_per_point=1e12) is one line, not an allocation of terabytes that fails deep inside torch."""

from __future__ import annotations

import os


def total_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} bytes"


def check_fits(nbytes: float, what: str, fix: str) -> None:
    """ValueError when ``what`` needs more than the machine's whole memory: '<what> needs at least …'."""
    total = total_memory()
    if total is not None and nbytes > total:
        raise ValueError(f"{what} needs at least {_size(nbytes)} of memory, more than this machine has "
                         f"({_size(total)}); {fix}")


def check_samples_fit(n: int, image_size, key: str, what: str = "one point's samples") -> None:
    """n samples held as float32 at once: at least n x image_size^2 x 4 bytes (one channel; the real need is
    larger)."""
    side = image_size if isinstance(image_size, int) and image_size > 0 else 1
    check_fits(float(n) * side * side * 4, f"{key}={n} ({what}, held in memory as float32: {n:,} x {side}x{side} "
               "or more)", f"lower {key}")
