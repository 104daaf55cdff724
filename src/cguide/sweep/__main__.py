"""Hydra entry point of the guidance sweep.

    # a 4 x 2 grid in one job (points with the same sampler/steps/interval share batches)
    python -m cguide.sweep eps_ckpt=E.ckpt classifier_ckpt=C.ckpt judge_ckpt=J.ckpt \
        sweep.scales=[0,1,2,4] sweep.variants=[score,seed_literal] sweep.n_per_point=1000
    # the same points, one per job: all jobs write into outputs/sweeps/<sweep.name> and one W&B group
    python -m cguide.sweep -m guidance.scale=0,1,2,4 guidance.variant=score,seed_literal eps_ckpt=... 

Rerunning into the same folder skips the points already in results.jsonl."""

from __future__ import annotations


import hydra
from omegaconf import DictConfig

from ..cli import CONF_DIR, run_or_exit
from ..config import register_configs
from .runner import run_sweep

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sweep")
def main(cfg: DictConfig) -> None:
    print(f"results: {run_or_exit(run_sweep, cfg)}/results.csv")


if __name__ == "__main__":
    main()
