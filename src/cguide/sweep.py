"""Hydra entry point of the guidance sweep.

    # a 4 x 2 grid in one job (points with the same sampler/steps/interval share batches)
    python -m cguide.sweep eps_ckpt=E.ckpt classifier_ckpt=C.ckpt judge_ckpt=J.ckpt \\
        sweep.scales=[0,1,2,4] sweep.variants=[score,seed_literal] sweep.n_per_point=1000
    # the same points, one per job: all jobs write into outputs/sweeps/<sweep.name> and one W&B group
    python -m cguide.sweep -m guidance.scale=0,1,2,4 guidance.variant=score,seed_literal eps_ckpt=...
    # Optuna over guidance settings (conf/hparams_search/): each trial is one point, its metrics the objective
    python -m cguide.sweep -m hparams_search=guidance_fid eps_ckpt=...
    # guided-diffusion's released weights (conf/experiment/adm*.yaml; files under paths.adm_dir, default models/)
    python -m cguide.sweep experiment=adm256_uncond_table4 speed.fp16=true

    # several processes: 2 spawned here (GPUs or CPU processes), or the ranks torchrun / submitit start
    python -m cguide.sweep distributed.devices=2 eps_ckpt=...
    torchrun --nproc-per-node=4 -m cguide.sweep eps_ckpt=...

Rerunning into the same folder skips the points already in results.jsonl."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from .cli import CONF_DIR, check_int64, check_output_args, print_config_tree, require, run_or_exit
from .config import register_configs
from .grid.objective import check_objective, objective
from .grid.runner import run_sweep
from .io.memory import check_samples_fit
from .runtime.distributed import init_from_env, is_main, spawn

register_configs()


def run(cfg: DictConfig) -> Path | None:
    """One process, the ranks of the environment (torchrun, submitit tasks), or distributed.devices
    spawned processes: each rank draws its share, rank 0 measures and writes (and returns the folder)."""
    check_int64(cfg)
    check_objective(cfg)
    require(cfg, "judge_ckpt")
    check_samples_fit(cfg.sweep.n_per_point, cfg.data.get("image_size"), "sweep.n_per_point")
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
def hydra_main(cfg: DictConfig):
    print_config_tree(cfg, first=("eps_ckpt", "classifier_ckpt", "judge_ckpt", "sweep", "guidance", "sampler"))
    out = run_or_exit(run, cfg)
    if out is None:  # a rank other than 0
        return None
    print(f"results: {out}/results.csv")
    return run_or_exit(objective, cfg, out)  # what a Hydra sweeper (hparams_search=) optimises


def main():
    """Hydra makes its run folder inside out_dir (hydra.run.dir in conf/sweep.yaml) before the sweep starts,
    so an out_dir given on the command line that is a file, lies under one, is read-only or has a name too long
    (or a read-only working directory, for the default out_dir) is refused first as one line (Hydra's own mkdir
    would end in a traceback)."""
    check_output_args(sys.argv[1:], "out_dir")
    return hydra_main()


if __name__ == "__main__":
    main()
