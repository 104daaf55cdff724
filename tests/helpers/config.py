"""Composing the real Hydra configs as the entry points do."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = str(Path(__file__).resolve().parents[2] / "conf")

# Tiny and fast: 8x8 mnist5k, few steps, no logger, no progress bars.
TINY = ["data.image_size=8", "data.batch_size=32", "model=tiny", "classifier=tiny", "judge=tiny", "guide=tiny",
        "judge2=tiny",  # the second judge takes the judge's steps (conf/judge2/)
        "guide.max_steps=6", "logger=none",
        "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2", "callbacks.sample_grid.n=4",
        "callbacks.sample_grid.steps=3", "callbacks.sample_grid.every_n_steps=0", "diffusion.T=100",
        "model.max_steps=6", "classifier.max_steps=6", "judge.max_steps=6"]

# On top of TINY for conf/pipeline.yaml (the cfg_pipeline fixture): a few steps per net, a 2-point sweep of 20.
PIPELINE_FAST = ["model.max_steps=4", "classifier.max_steps=4", "judge.max_steps=4", "sweep.n_per_point=20",
                 "sweep.steps=[4]", "sweep.batch_size=64"]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path):
    """Compose conf/<config_name>.yaml as the entry point would, with paths under output_dir."""
    from cguide.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name, overrides=[f"paths.output_dir={output_dir}", *overrides])
