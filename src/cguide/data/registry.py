"""Dataset name -> DataModule class; adding a dataset is one entry here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import ImageDataModule
from .config import DataConfig, as_data_config
from .image_folder import ImageFolderDataModule
from .mnist5k import MNIST5kDataModule
from .torchvision_sets import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule

DATAMODULES: dict[str, type[ImageDataModule]] = {
    "mnist5k": MNIST5kDataModule,
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "image_folder": ImageFolderDataModule,
}


def build_datamodule(cfg: DataConfig | Mapping[str, Any]) -> ImageDataModule:
    """DataConfig, dict or DictConfig -> the named DataModule (not yet set up)."""
    name = cfg.name if isinstance(cfg, DataConfig) else cfg.get("name", DataConfig.name)
    if name not in DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATAMODULES)}")
    return DATAMODULES[name](as_data_config(cfg))
