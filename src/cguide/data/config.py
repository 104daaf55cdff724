"""DataConfig: the one config object every DataModule is built from.

Plain dataclass with primitive fields so Hydra can use it as a structured config; validation
runs in ``__post_init__`` (i.e. when ``build_datamodule`` turns a dict/DictConfig into it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Optional

RESIZE_MODES = ("resize", "pad")


@dataclass
class DataConfig:
    name: str = "mnist5k"
    root: str = "data"
    image_size: int = 16
    batch_size: int = 128
    num_workers: int = 0
    download: bool = False
    # "resize": antialiased bilinear (shorter side, then centre crop for non-square images);
    # "pad": centre the native image on a black (-1) canvas; needs image_size >= native size.
    resize: str = "resize"
    split_seed: int = 0
    val_fraction: float = 0.1
    # Only for sets without an official test split (mnist5k, image_folder).
    test_fraction: float = 0.1
    # None = the dataset's native channel count; 1 or 3 converts (grey <-> RGB).
    channels: Optional[int] = None
    # cifar10 only: False skips torchvision's md5 check of the batch files (for locally
    # written or re-packed batches); the file format is still the real one.
    verify_md5: bool = True

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"data.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"data.channels must be null, 1 or 3, got {self.channels}")
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"data.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.val_fraction + data.test_fraction must be < 1 (nothing left to train on)")


def as_data_config(cfg: DataConfig | Mapping[str, Any]) -> DataConfig:
    """Accept a DataConfig, a dict or a DictConfig (any Mapping) and return a validated DataConfig."""
    if isinstance(cfg, DataConfig):
        cfg.__post_init__()  # fields may have been changed after construction
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"data config must be a DataConfig or a mapping, got {type(cfg).__name__}")
    known = [f.name for f in fields(DataConfig)]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ValueError(f"unknown data config keys {unknown}; known: {', '.join(known)}")
    return DataConfig(**{k: cfg[k] for k in cfg})
