"""Output folders checked before any work: a run that can only fail at its end must fail at its start."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path


def check_not_a_file(folder: str | os.PathLike, key: str) -> Path:
    """check_writable's refusals of a ``folder`` that is a file or lies under one, creating nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output folder {folder} is a file, not a folder; choose another {key}")
    above = next((p for p in folder.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(f"output folder {folder} is not writable ({os.strerror(errno.ENOTDIR)}); choose another {key}")
    return folder


NAME_MAX = 255  # bytes in one file or folder name, on every common file system


def check_creatable(folder: str | os.PathLike, key: str) -> Path:
    """What check_writable refuses, checked without creating anything: a file in the way, a name longer than the
    file system takes, and a folder (or, when it does not exist yet, the nearest folder above it) that is
    read-only or not writable for this user."""
    folder = Path(folder)
    long = next((part for part in folder.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:  # first: a stat of such a path fails itself
        raise ValueError(f"output folder {folder} is not writable ({os.strerror(errno.ENAMETOOLONG)}: a name of "
                         f"{len(os.fsencode(long))} bytes, '{long[:24]}...', over the {NAME_MAX} a file system takes); "
                         f"choose another {key}")
    check_not_a_file(folder, key)
    here = folder.absolute()
    here = next((p for p in (here, *here.parents) if p.exists()), None)
    if here is not None and not os.access(here, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(here).f_flag & os.ST_RDONLY)
        why = os.strerror(errno.EROFS if read_only else errno.EACCES)
        where = "" if here == folder.absolute() else f": {here}"
        raise ValueError(f"output folder {folder} is not writable ({why}{where}); choose another {key}")
    return folder


def check_writable(folder: str | os.PathLike, key: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it; one line naming ``key`` if not."""
    folder = check_not_a_file(folder, key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"output folder {folder} is not writable ({e.strerror}); choose another {key}") from None
    return folder


def move_aside(folder: str | os.PathLike) -> Path:
    """Rename ``folder`` to ``<folder>.replaced-<time>`` (kept, never deleted); returns the new path."""
    folder = Path(folder)
    aside = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(folder), aside)
    return aside


# errno -> what to do, for a write that failed: one line instead of a traceback (cguide.cli.run_or_exit)
WRITE_FIXES = {
    errno.ENOSPC: "free some space on that disk (or choose another output folder), then run the same command again",
    errno.EDQUOT: "free some of your disk quota (or choose another output folder), then run the same command again",
    errno.EFBIG: "the file size limit (ulimit -f) is below what this run writes: raise it, then run the same command "
                 "again",
    errno.EROFS: "that file system is read-only: choose another output folder (out_dir / paths.output_dir), or run "
                 "from a writable working directory",
    errno.EACCES: "that folder is not writable for you: choose another output folder (out_dir / paths.output_dir), or "
                  "run from a writable working directory",
    errno.EPERM: "that folder is not writable for you: choose another output folder (out_dir / paths.output_dir)",
    errno.ENAMETOOLONG: "a file or folder name there is longer than the file system allows (255 bytes a name): "
                        "choose a shorter out_dir, sweep.name or name",
}


def write_error_line(e: OSError) -> str | None:
    """One line for an OSError of a failed write (None: not one of those): what failed, why, and what to do.
    Whatever was written before is intact (every file is written whole: temp file + rename)."""
    fix = WRITE_FIXES.get(e.errno)
    if fix is None:
        return None
    where = f" {e.filename}" if e.filename else ""
    return (f"cannot write{where}: {e.strerror}; {fix} (what was finished before is kept: every file is written "
            "whole)")
