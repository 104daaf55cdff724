"""Shared fixtures: the real Hydra config, composed, and tiny trained checkpoints of all three nets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = str(Path(__file__).resolve().parents[1] / "conf")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread: the test tensors are tiny, and two threads on two busy cores thrash (seen: 5 s vs 0.02 s).
torch.set_num_threads(1)

# Tiny and fast: 8x8 mnist5k, few steps, no logger, no progress bars.
TINY = ["data.image_size=8", "data.batch_size=32", "model=tiny", "classifier=tiny", "judge=tiny", "logger=none",
        "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2", "callbacks.sample_n=4",
        "callbacks.sample_steps=3", "callbacks.sample_every_n_steps=0", "diffusion.T=100",
        "model.max_steps=6", "classifier.max_steps=6", "judge.max_steps=6"]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path):
    """Compose conf/<config_name>.yaml as the entry point would, with paths under output_dir."""
    from cguide.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name, overrides=[f"paths.output_dir={output_dir}", *overrides])


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of a tiny eps-model, noisy classifier and judge trained for a few steps (paths by kind)."""
    from cguide.train import train

    root = tmp_path_factory.mktemp("tiny_ckpts")
    out = {}
    for task, kind in [("diffusion", "eps_model"), ("classifier", "noisy_classifier"), ("judge", "judge")]:
        cfg = compose_cfg("train", [f"task={task}", *TINY], root / task)
        out[kind] = train(cfg)
    return out


def nan_classifier(src: Path, dst: Path) -> Path:
    """A copy of a classifier checkpoint with NaN weights: its gradient is NaN for every sample, every step."""
    ckpt = torch.load(src, weights_only=True)
    ckpt["state_dict"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, dst)
    return dst
