"""Callbacks: a sample grid from the EMA eps-model every N steps (PNG on disk and to the logger); more
threads for this training once a parallel process has finished (pipeline workers=2)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from ..io.atomic import atomic_torch_save
from ..io.checkpoints import read_checkpoint
from ..diffusion import SamplerSpec, make_plan, sample
from ..io.images import save_grid


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` (and at the end of training) draw ``n`` samples with DDIM on
    ``steps`` respaced steps from fixed seeds, so grids of successive steps are comparable. x_0 is
    clipped to [-1, 1] at each step, as in the sampler's default. A class-conditional model draws
    labels 0..C-1 cycling, C per grid row (column = class)."""

    def __init__(self, every_n_steps: int = 500, n: int = 64, steps: int = 50, dirpath: str | None = None):
        self.every, self.n, self.steps, self.dirpath = every_n_steps, n, steps, dirpath

    def _grid(self, trainer: L.Trainer, module) -> None:
        if not trainer.is_global_zero or self.n <= 0:
            return
        plan = make_plan(module.schedule, min(self.steps, module.T))
        net = module.ema.eval()
        C = module.ema.module.cfg.num_classes
        y = None if C is None else torch.arange(self.n, device=module.device) % C
        x = sample(lambda x, t: net(x, t, y), module.hparams.image_shape, plan, range(self.n),
                   SamplerSpec("ddim", clip_x0=True), device=module.device, progress=False)
        root = Path(self.dirpath or Path(trainer.default_root_dir) / "samples")
        path = save_grid(x, root / f"step_{trainer.global_step:07d}.png", nrow=C)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image("samples", [str(path)], step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0:
            self._grid(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._grid(trainer, pl_module)


class FinalCheckpoint(L.Callback):
    """Write the final checkpoint at the end of fit, inside the training processes: under ddp_spawn the
    launching process gets the weights back but not the step count or optimizer state, so a checkpoint
    saved there after fit would claim step 0. Every rank calls save (Lightning writes on rank 0 only).
    After a test (the judge) only the metadata's ``extra`` (test accuracy) is refreshed in that file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        if not trainer.fast_dev_run:
            trainer.save_checkpoint(self.path)

    def on_test_end(self, trainer, pl_module):
        if trainer.is_global_zero and not trainer.fast_dev_run and Path(self.path).is_file():
            ckpt = read_checkpoint(self.path)
            ckpt["cguide"]["extra"] = pl_module.cguide_meta()["extra"]
            atomic_torch_save(ckpt, self.path)
        trainer.strategy.barrier()


class TakeThreadsAtStep(L.Callback):
    """torch's intra-op threads go to ``n`` at optimizer step ``step``, after ``wait()`` returns (the process
    trained beside this one has finished; it raises if that process failed, which stops this training there; it
    may return how long ago that process finished, which the log line reports): a
    pipeline stage takes the whole CPU once it is free. A fixed step, not the moment the other process ends, so
    the float rounding (which depends on the thread count) and with it the trained weights are the same in every
    run."""

    def __init__(self, n: int, step: int, wait):
        self.n, self.step, self.wait, self.taken = n, step, wait, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.taken and trainer.global_step >= self.step:
            t0 = time.perf_counter()
            idle = self.wait()  # a float: how long the other process had been done (its core idle) by now
            waited = time.perf_counter() - t0
            torch.set_num_threads(self.n)
            self.taken = True
            # the balance of the split, for tuning the step: either this process waited, or the other one idled
            balance = (f"the other process had been done for {idle:.0f} s" if isinstance(idle, float) and waited < 0.5
                       else f"waited {waited:.1f} s for the other process")
            print(f"[workers] step {trainer.global_step}: {self.n} thread(s) from here ({balance})")
