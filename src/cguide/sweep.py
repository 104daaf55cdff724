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


FAILED_JOBS: list[tuple[int, list[str]]] = []  # multirun jobs of this process that stopped with an error line


def _job(cfg: DictConfig):
    out = run_or_exit(run, cfg)
    if out is None:  # a rank other than 0
        return None
    print(f"results: {out}/results.csv")
    return run_or_exit(objective, cfg, out)  # what a Hydra sweeper (hparams_search=) optimises


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sweep")
def hydra_main(cfg: DictConfig):
    print_config_tree(cfg, first=("eps_ckpt", "classifier_ckpt", "judge_ckpt", "sweep", "guidance", "sampler"))
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or not str(hc.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return _job(cfg)  # an optimising sweeper (Optuna) stops at a bad trial: its settings are the search's
    try:  # a grid multirun goes on past a job with bad settings (its error line is above) and lists it at the end
        return _job(cfg)
    except SystemExit as e:
        if e.code != 2:  # interrupted (130, 143): the whole multirun stops
            raise
        FAILED_JOBS.append((hc.job.num, list(hc.overrides.task)))
        return None


def main():
    """Hydra makes its run folder inside out_dir (hydra.run.dir in conf/sweep.yaml) before the sweep starts,
    so an out_dir given on the command line that is a file, lies under one, is read-only or has a name too long
    (or a read-only working directory, for the default out_dir) is refused first as one line (Hydra's own mkdir
    would end in a traceback)."""
    check_output_args(sys.argv[1:], "out_dir")
    FAILED_JOBS.clear()
    result = hydra_main()
    if FAILED_JOBS:  # each named by its job number and its values of the swept keys
        swept = {k for k, _, v in (a.partition("=") for a in sys.argv[1:] if "=" in a)
                 if ("," in v and not v.startswith("[")) or v.startswith(("choice(", "range(", "glob("))}
        named = [(num, [o for o in overrides if o.partition("=")[0] in swept] or overrides)
                 for num, overrides in FAILED_JOBS]
        jobs = "; ".join(f"#{num} ({' '.join(values)})" for num, values in named)
        print(f"error: {len(FAILED_JOBS)} multirun job(s) stopped with an error (its line above), the others ran: "
              f"{jobs}", file=sys.stderr)
        sys.exit(2)
    return result


if __name__ == "__main__":
    main()
