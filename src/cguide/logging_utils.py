"""Experiment loggers for Lightning: W&B (offline by default, never needs an API key), CSV, none."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

LOGGERS = ("wandb", "csv", "none")


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


def build_logger(cfg, save_dir: str, name: Optional[str] = None, config: Optional[dict] = None):
    """A Lightning logger from cfg (LoggerConfig), or False for none."""
    kind = cfg.name
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger
        return CSVLogger(save_dir=save_dir, name=name or "csv")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger
        os.makedirs(save_dir, exist_ok=True)
        logger = WandbLogger(project=cfg.project, name=name, group=cfg.group, tags=list(cfg.tags), save_dir=save_dir,
                             mode=wandb_mode(cfg.mode), config=config, reinit="finish_previous")
        return logger
    raise ValueError(f"unknown logger {kind!r}; known: {', '.join(LOGGERS)}")


def finish_wandb() -> None:
    """End the active W&B run, so Hydra multirun jobs never log into one run."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
