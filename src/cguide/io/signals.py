"""SIGINT and SIGTERM: a run stops cleanly and says so, with a non-zero exit (128 + the signal: 130, 143).

Training stops at the end of its current optimizer step (Lightning's own SIGTERM stop, for SIGINT too), saves
last.ckpt at that step and raises ``Stopped``: a rerun resumes from there and loses nothing. A second signal
stops at once. Outside training a signal raises ``Stopped`` where the run is, so its ``finally`` blocks run
(helper processes stopped, sweep claims released); what was finished before is kept, since every file is
written whole (temp file + rename). The entry points (cguide.cli.run_or_exit) turn it into one line."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The run was stopped by a signal; ``note`` says what was kept (e.g. the checkpoint saved)."""

    def __init__(self, signum: int, note: str = ""):
        super().__init__(signum, note)
        self.signum, self.note = int(signum), note

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_requested: list[int] = []  # signals received while a training loop was asked to stop at its step's end


def stop_requested() -> int | None:
    """The signal a training run of this process was asked to stop by (None: none)."""
    return _requested[-1] if _requested else None


def _raise(signum, frame):
    raise Stopped(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stop_on_signals():
    """SIGTERM raises Stopped here, as SIGINT raises KeyboardInterrupt (the default for SIGTERM ends the process
    without its finally blocks: helpers would draw on, claims and W&B runs stay open)."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    signal.signal(signal.SIGTERM, _raise)
    if previous[signal.SIGINT] is signal.default_int_handler:  # never turn on a SIGINT someone ignored
        signal.signal(signal.SIGINT, _raise)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
