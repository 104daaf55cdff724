"""Processes seen from outside, through /proc (Linux)."""

from __future__ import annotations


def running(pid: int) -> bool:
    """pid exists and is not a zombie (an orphan may wait for a reaper that never comes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
