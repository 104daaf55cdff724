"""Shared fixtures: the real Hydra configs, composed (train / sweep / pipeline), and tiny trained
checkpoints of the nets. Helpers live in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers.config import TINY, compose_cfg

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread: the test tensors are tiny, and two threads on two busy cores thrash (seen: 5 s vs 0.02 s).
# CGUIDE_TEST_THREADS=2 runs the suite on 2 threads (it must pass on 1 and on 2: kernels split work by thread
# count, so a result is bit-exact only against one computed on as many threads).
THREADS = int(os.environ.get("CGUIDE_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _test_threads():
    """Each test starts on THREADS threads (an entry point run with num_threads=N leaves torch at N)."""
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of a tiny eps-model, noisy classifier and judge trained for a few steps (paths by kind)."""
    from cguide.train import train

    root = tmp_path_factory.mktemp("tiny_ckpts")
    out = {}
    for task, kind in [("diffusion", "eps_model"), ("classifier", "noisy_classifier"), ("judge", "judge")]:
        cfg = compose_cfg("train", [f"task={task}", *TINY], root / task)
        out[kind] = train(cfg).checkpoint
    return out


@pytest.fixture(scope="session")
def tiny_cond_ckpt(tmp_path_factory) -> Path:
    """A tiny class-conditional eps-model (label dropout 0.2), on the schedule of tiny_ckpts."""
    from cguide.train import train

    cfg = compose_cfg("train", ["task=diffusion", "model.cond=true", "model.p_uncond=0.2", *TINY],
                      tmp_path_factory.mktemp("tiny_cond"))
    return train(cfg).checkpoint


@pytest.fixture(scope="session")
def tiny_guide_ckpt(tmp_path_factory) -> Path:
    """A tiny clean guide classifier (task=guide: the judge's architecture, its own seed), for x0-space guidance."""
    from cguide.train import train

    return train(compose_cfg("train", ["task=guide", *TINY], tmp_path_factory.mktemp("tiny_guide"))).checkpoint


@pytest.fixture(scope="session")
def tiny_judge2_ckpt(tmp_path_factory) -> Path:
    """A tiny second judge (task=judge2: the plain CNN, its own seed), on the data of tiny_ckpts."""
    from cguide.train import train

    return train(compose_cfg("train", ["task=judge2", *TINY], tmp_path_factory.mktemp("tiny_judge2"))).checkpoint


@pytest.fixture
def cfg_train(tmp_path):
    """cfg_train(*overrides): conf/train.yaml with the tiny settings, writing under tmp_path."""
    return lambda *overrides: compose_cfg("train", [*TINY, *overrides], tmp_path)


@pytest.fixture
def cfg_sweep(tmp_path, tiny_ckpts):
    """cfg_sweep(*overrides): conf/sweep.yaml on the tiny checkpoints, a 2-step sampler, into tmp_path/sweep."""
    out = tmp_path / "sweep"
    base = [f"eps_ckpt={tiny_ckpts['eps_model']}", f"classifier_ckpt={tiny_ckpts['noisy_classifier']}",
            f"judge_ckpt={tiny_ckpts['judge']}", "data.image_size=8", "sampler.steps=2", "sweep.n_per_point=10",
            "progress=false", "logger=none", f"out_dir={out}"]
    return lambda *overrides: compose_cfg("sweep", [*base, *overrides], out)


@pytest.fixture
def cfg_pipeline(tmp_path):
    """cfg_pipeline(*overrides): the tiny pipeline (debug=default) into tmp_path/pipeline."""
    out = tmp_path / "pipeline"
    return lambda *overrides: compose_cfg("pipeline", ["debug=default", f"out_dir={out}", "progress=false",
                                                       *overrides], out)
