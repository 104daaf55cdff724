"""Shared DataModule behaviour: metadata before setup, loaders, held-out test images."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .config import DataConfig


class TensorImageDataset(Dataset):
    """Images [N,C,H,W] + labels [N]; an optional per-item transform (e.g. uint8 -> [-1,1])."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Optional[Callable] = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.labels[i]


class ImageDataModule(L.LightningDataModule):
    """Subclasses set num_classes, image_shape, class_names in __init__ (models are built from
    them before setup) and fill train_set/val_set/test_set in ``_build_splits``."""

    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: list[str]

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg
        # Plain dict: lands in checkpoints as datamodule_hyper_parameters and loads under torch's weights_only.
        self.save_hyperparameters(asdict(cfg))
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    def _set_meta(self, class_names: list[str], channels: int) -> None:
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.image_shape = (channels, self.cfg.image_size, self.cfg.image_size)

    def _build_splits(self) -> None:
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        # All splits at once: they come from one seeded split, and building them is cheap.
        if self.train_set is None:
            self._build_splits()

    def _loader(self, ds: Optional[Dataset], train: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        n = self.cfg.num_workers
        return DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=train, drop_last=train,
                          num_workers=n, persistent_workers=n > 0)

    def train_dataloader(self) -> DataLoader:
        # drop_last with a train split smaller than one batch would silently train on nothing.
        if self.train_set is not None and len(self.train_set) < self.cfg.batch_size:
            raise ValueError(f"train split has {len(self.train_set)} images, fewer than data.batch_size={self.cfg.batch_size}")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def test_images(self, max_n: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out test split as tensors (x [N,C,H,W] in [-1,1], y [N]); first max_n items.

        Split order is seeded-random (or the official order), so a prefix is a fair sample."""
        self.setup("test")
        n = len(self.test_set) if max_n is None else min(max_n, len(self.test_set))
        if n == 0:
            shape = (0, *self.image_shape)
            return torch.empty(shape), torch.empty(0, dtype=torch.long)
        xs, ys = zip(*(self.test_set[i] for i in range(n)))
        return torch.stack(xs), torch.stack(ys)
