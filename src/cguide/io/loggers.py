"""Experiment loggers for Lightning: W&B (offline by default, never needs an API key), CSV, none.
Logging never kills a run: W&B online without a key, or with its server out of reach, logs offline."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

LOGGERS = ("wandb", "csv", "none")
# wandb.init waits 90 s for an unreachable server by default; fail over to offline sooner.
INIT_TIMEOUT_S = 30.0


def wandb_mode(requested: str) -> str:
    """'online' without an API key or network would stall or fail: fall back to offline, once, loudly."""
    if requested != "online":
        return requested
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").is_file()
    if not has_key:
        warnings.warn("W&B online mode asked for but no API key is set; logging offline instead "
                      "(upload later with `wandb sync`)", stacklevel=2)
        return "offline"
    return "online"


def init_timeout() -> float:
    return float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S))


def start_wandb(start: Callable[[str], object], requested: str):
    """start(mode) creates and connects a W&B run (or logger); if mode 'online' fails (server out of reach,
    key refused), warn once and start it offline instead."""
    mode = wandb_mode(requested)
    if mode != "online":
        return start(mode)
    try:
        return start("online")
    except Exception as e:  # noqa: BLE001 -- any W&B failure: keep the run, log offline
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        warnings.warn(f"W&B online mode failed ({type(e).__name__}: {reason}); logging offline instead "
                      "(upload later with `wandb sync`)", stacklevel=2)
        finish_wandb()
        return start("offline")


def build_logger(cfg, save_dir: str, name: Optional[str] = None, config: Optional[dict] = None,
                 tags: Sequence[str] = ()):
    """A Lightning logger from cfg (LoggerConfig), or False for none. The W&B logger is built here, not
    by hydra's instantiate: its online -> offline fallback needs to retry the construction."""
    kind = cfg.name
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger
        return CSVLogger(save_dir=save_dir, name=name or "csv")
    if kind == "wandb":
        import wandb
        from lightning.pytorch.loggers import WandbLogger
        os.makedirs(save_dir, exist_ok=True)

        def start(mode: str):
            logger = WandbLogger(project=cfg.project, name=name, group=cfg.group, tags=[*tags, *cfg.tags],
                                 save_dir=save_dir, mode=mode, config=config, reinit="finish_previous",
                                 settings=wandb.Settings(init_timeout=init_timeout()))
            if mode == "online":
                logger.experiment  # connect now, where a failure can still fall back to offline
            return logger

        return start_wandb(start, cfg.mode)
    raise ValueError(f"unknown logger {kind!r}; known: {', '.join(LOGGERS)}")


def finish_wandb() -> None:
    """End the active W&B run, so Hydra multirun jobs never log into one run."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
