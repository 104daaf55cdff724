"""Hydra entry point of the guidance sweep.

    # a 4 x 2 grid in one job (points with the same sampler/steps/interval share batches)
    python -m cguide.sweep eps_ckpt=E.ckpt classifier_ckpt=C.ckpt judge_ckpt=J.ckpt \
        sweep.scales=[0,1,2,4] sweep.variants=[score,seed_literal] sweep.n_per_point=1000
    # the same points, one per job: all jobs write into outputs/sweeps/<sweep.name> and one W&B group
    python -m cguide.sweep -m guidance.scale=0,1,2,4 guidance.variant=score,seed_literal eps_ckpt=... 

    # several processes: 2 spawned here (GPUs or CPU processes), or the ranks torchrun / submitit start
    python -m cguide.sweep distributed.devices=2 eps_ckpt=...
    torchrun --nproc-per-node=4 -m cguide.sweep eps_ckpt=...

Rerunning into the same folder skips the points already in results.jsonl."""

from __future__ import annotations


import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ..cli import CONF_DIR, run_or_exit
from ..config import register_configs
from ..distributed import init_from_env, is_main, spawn
from .runner import run_sweep

register_configs()


def run_distributed(cfg: DictConfig):
    """One process, the ranks of the environment (torchrun, submitit tasks), or distributed.devices
    spawned processes: each rank draws its share, rank 0 measures and writes."""
    n = cfg.distributed.devices
    if n < 1:
        raise ValueError(f"distributed.devices must be >= 1, got {n}")
    if init_from_env():
        try:
            out = run_sweep(cfg)
            return out if is_main() else None  # asked before the group is gone
        finally:
            torch.distributed.destroy_process_group()
    if n == 1:
        return run_sweep(cfg)
    # spawned processes get a plain, resolved copy: Hydra's resolvers do not exist there
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return spawn(run_sweep, n, plain)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sweep")
def main(cfg: DictConfig) -> None:
    out = run_or_exit(run_distributed, cfg)
    if out is not None:  # rank 0 only
        print(f"results: {out}/results.csv")


if __name__ == "__main__":
    main()
