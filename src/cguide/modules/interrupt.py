"""Training's side of SIGINT / SIGTERM (cguide.io.signals): stop at the end of the current step and save last.ckpt
there, so a rerun resumes where it stopped and loses nothing."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

import lightning as L

from ..io.signals import SIGNALS, Stopped, _main_thread, _requested, stop_requested


@contextmanager
def stop_at_step_end(trainer: L.Trainer):
    """While ``trainer`` runs: the first SIGINT / SIGTERM asks it to stop at the end of the current step
    (Lightning then raises SIGTERMException there, and SaveOnStop saves last.ckpt); a second one stops at once."""
    if not _main_thread():
        yield
        return

    def ask(signum, frame):
        if _requested:  # asked already: the user insists
            raise Stopped(signum)
        _requested.append(signum)
        trainer._signal_connector.received_sigterm = True  # what Lightning's own SIGTERM handler sets
        # (no print here: a handler writing to stdout while the interrupted code does raises a reentrancy error)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _requested.clear()
    for s in SIGNALS:
        if previous[s] is not signal.SIG_IGN:
            signal.signal(s, ask)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class SaveOnStop(L.Callback):
    """When training stops on a signal (Lightning's SIGTERMException, raised at the end of a step): save
    ``last`` at that step unless the checkpoint callback just did, so a rerun resumes where it stopped. A signal
    that came before Lightning set up its loop (which clears its flag) is passed on at the first step's end."""

    def __init__(self, last: str | Path):
        self.last, self.saved_at = str(last), None

    def _pass_on(self, trainer, *args):
        if stop_requested() is not None:
            trainer._signal_connector.received_sigterm = True

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = _pass_on

    def on_exception(self, trainer, pl_module, exception):
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException) or trainer.fast_dev_run or trainer.sanity_checking \
                or trainer.global_step == 0:
            return
        mc = trainer.checkpoint_callback
        if mc is None or getattr(mc, "_last_global_step_saved", None) != trainer.global_step \
                or not Path(self.last).is_file():
            trainer.save_checkpoint(self.last)
        self.saved_at = trainer.global_step
