"""Per-point claims, so two sweeps started into one folder never draw a point twice: one fcntl lock file
per point under <out>/.running/, taken non-blocking before the point is drawn and released once its row
is in results.jsonl. The kernel drops a killed process's locks, so a claim never outlives its process;
parallel multirun jobs (other points) never wait on each other. The lock files themselves stay (empty):
unlinking a lock file races with a process opening it."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterable

from ..runtime.distributed import is_main, main_then_share
from .points import Point, pack

RUNNING = ".running"


class PointClaims:
    def __init__(self, root: str | Path, done: Callable[[], set[str]]):
        self.dir = Path(root) / RUNNING
        self.done = done  # the points finished by now (by any process)
        self.held: dict[str, int] = {}

    def take(self, keys: Iterable[str]) -> tuple[list[str], list[str]]:
        """Claim what is free: (taken, busy = held by another live process); finished points are in neither."""
        self.dir.mkdir(parents=True, exist_ok=True)
        taken, busy = [], []
        for key in keys:
            fd = os.open(self.dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                busy.append(key)
                continue
            self.held[key] = fd
            taken.append(key)
        finished = self.done() & set(taken)  # finished by another process before we got its lock
        self.release(finished)
        return [k for k in taken if k not in finished], busy

    def release(self, keys: Iterable[str] | None = None) -> None:
        """Drop the claims on keys (all when None)."""
        for key in list(self.held if keys is None else keys):
            fd = self.held.pop(key, None)
            if fd is not None:
                os.close(fd)  # closing the descriptor drops its lock


def claimed_calls(todo: list[Point], per_call: int | None, claims: PointClaims, out: Path,
                  on_wait: Callable[[], None] = lambda: None):
    """The calls to draw, each of points this process has claimed (rank 0 claims for all ranks). A point
    another live process is drawing is left for later: retried after the rest, then every second until
    its row lands (or its holder dies and it is drawn here); on_wait runs once each such second."""
    left, told = todo, False
    while left:
        held = []
        for call in pack(left, per_call or len(left)):
            taken, busy = main_then_share(claims.take, [p.key for p in call])
            held += [p for p in call if p.key in busy]
            if taken:
                yield [p for p in call if p.key in taken]
        if held and told:
            on_wait()
            time.sleep(1)
        elif held and is_main():
            print(f"sweep {out}: {len(held)} point(s) being drawn by another process right now; "
                  "waiting for their rows (drawn here if that process stops)")
        told, left = told or bool(held), held
