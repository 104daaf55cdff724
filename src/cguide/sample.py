"""Hydra entry point: draw guided samples from checkpoints; a grid PNG per class and samples.npz.

    python -m cguide.sample eps_ckpt=E.ckpt classifier_ckpt=C.ckpt classes=[3,7] n_per_class=16 \\
        guidance.scale=2 guidance.variant=seed_literal sampler=ddpm sampler.steps=250
    python -m cguide.sample eps_ckpt=E.ckpt guidance=unguided      # s = 0: no classifier needed
    python -m cguide.sample eps_ckpt=E.ckpt guide_ckpt=G.ckpt guidance.grad_space=x0 guidance.scale=4   # x0-space

samples.npz holds samples [N,C,H,W] (float32, [-1,1]), targets [N], seeds [N], nonfinite_steps [N]
and settings (a JSON string: np.load(...)["settings"].item()).

Samples with a NaN or inf value (non-finite eps-model weights, an absurd guidance.scale or sampler.eta) give a
warning with their share, as the sweep's `nonfinite` column counts them; when every sample is non-finite the run
stops with one error line (exit 2) and writes nothing, so an earlier samples.npz stays, unless allow_nonfinite=true."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .cli import CONF_DIR, apply_num_threads, check_int64, print_config_tree, run_or_exit
from .config import plain, register_configs
from .diffusion import SamplerSpec
from .guidance import GuidanceSetting, GuidanceSpec
from .io.atomic import atomic_write
from .io.folders import check_writable
from .io.images import save_grid
from .io.memory import check_fits
from .runtime.draw import RunOptions, check_device, draw, load_models


def write_npz(path: Path, **arrays) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a temp path
            np.savez(f, **arrays)
    return atomic_write(path, write)


def _nonfinite_weights(loaded) -> bool:
    return any(not torch.isfinite(p).all() for p in loaded.net.parameters())


def check_finite(x: torch.Tensor, cfg: DictConfig, models) -> None:
    """Samples with a NaN or inf value: a warning with their share; all of them (unless allow_nonfinite) one error
    naming the likely cause, before anything is written."""
    bad = int((~torch.isfinite(x.flatten(1)).all(1)).sum())
    n = len(x)
    if not bad:
        return
    if bad == n and not cfg.allow_nonfinite:
        nets = [f"{what} {m.path}" for what, m in (("the eps-model", models.eps), ("the conditional eps-model",
                                                                                  models.cond))
                if m is not None and _nonfinite_weights(m)]
        why, fix = ((f"because {' and '.join(nets)} hold(s) NaN or inf weights", "retrain it or use another checkpoint")
                    if nets else (f"at guidance.scale={cfg.guidance.scale}, sampler.eta={cfg.sampler.eta}",
                                  "lower guidance.scale or sampler.eta"))
        raise FloatingPointError(f"all {n} samples are non-finite (NaN or inf) {why}; nothing was written; {fix}, "
                                 "or pass allow_nonfinite=true to write them anyway")
    warnings.warn(f"{bad} of {n} samples ({bad / n:.1%}) are non-finite (NaN or inf); they are written as they are "
                  "(the sweep's nonfinite column counts them alike)", stacklevel=2)


def run_sample(cfg: DictConfig) -> Path:
    """Draw, write grid_class<c>.png per class and samples.npz into cfg.out_dir; returns the npz path."""
    check_int64(cfg)
    setting = GuidanceSetting.from_config(cfg.guidance)
    sampler = SamplerSpec.from_config(cfg.sampler)
    run = RunOptions(cfg.batch_size, check_device(cfg.device), cfg.progress, cfg.speed)
    run.speed.check(run.device)  # e.g. speed.fp16 on a CPU: refused before anything is read or written
    apply_num_threads(cfg.num_threads)
    out = check_writable(cfg.out_dir, "out_dir")
    models = load_models(cfg.eps_ckpt, cfg.cond_ckpt, cfg.classifier_ckpt, GuidanceSpec.from_settings([setting], [0]),
                         presets={k: cfg.get(f"{k}_preset") for k in ("eps", "cond", "classifier")},
                         guide_ckpt=cfg.guide_ckpt)
    base = models.base
    classes = list(range(base.num_classes)) if cfg.classes is None else list(cfg.classes)
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        raise ValueError(f"classes must be a list of class indices, e.g. classes=[0,1], got {plain(cfg.classes)}")
    if not classes:
        raise ValueError("classes is empty; list some, e.g. classes=[0,1], or classes=null for all")
    if cfg.n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {cfg.n_per_class}")
    # before torch allocates them (n_per_class=1e11 tried terabytes)
    n, side = cfg.n_per_class * len(classes), base.image_shape[-1]
    check_fits(float(n) * side * side * 4, f"n_per_class={cfg.n_per_class} x {len(classes)} classes ({n:,} samples "
               f"held in memory as float32, {side}x{side} or more)", "lower n_per_class or classes")
    y = torch.tensor(classes).repeat_interleave(cfg.n_per_class)
    seeds = cfg.seed + torch.arange(len(y))
    x, nonfinite = draw(models, GuidanceSpec.from_settings([setting] * len(y), y), sampler, seeds.tolist(), run)
    check_finite(x, cfg, models)
    for c in classes:
        save_grid(x[y == c], out / f"grid_class{c}.png")
    settings = {
        **{k: str(m.path) if m else None for k, m in (("eps_ckpt", models.eps), ("cond_ckpt", models.cond),
                                                       ("classifier_ckpt", models.classifier),
                                                       ("guide_ckpt", models.guide))},
        **{f"{k}_preset": cfg.get(f"{k}_preset") for k in ("eps", "cond", "classifier") if cfg.get(f"{k}_preset")},
        "classes": classes, "n_per_class": cfg.n_per_class, "seed": cfg.seed,
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
        "guidance": OmegaConf.to_container(cfg.guidance, resolve=True),
        "speed": OmegaConf.to_container(cfg.speed, resolve=True),
        "image_shape": list(base.image_shape), "schedule": base.fingerprint,
    }
    return write_npz(out / "samples.npz", samples=x.float().numpy(), targets=y.numpy(), seeds=seeds.numpy(),
                     nonfinite_steps=nonfinite.numpy(), settings=np.array(json.dumps(settings)))


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    print_config_tree(cfg, first=("eps_ckpt", "classifier_ckpt", "guidance", "sampler"))
    print(f"samples: {run_or_exit(run_sample, cfg)}")


if __name__ == "__main__":
    main()
