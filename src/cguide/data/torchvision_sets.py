"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own loaders (file layout, parsing, download).

torchvision parses the files; we keep the uint8 arrays and apply our tensor transform per item.
The official train split is divided into train/val (seeded, stratified); test is the official test set.
"""

from __future__ import annotations

import os

import torch
from torchvision import datasets

from .base import ImageDataModule, TensorImageDataset
from .config import DataConfig
from .splits import stratified_split
from .transforms import ImageTransform

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class CIFAR10NoMD5(datasets.CIFAR10):
    """CIFAR10 with the md5 integrity check switched off (files must still exist and be in the
    real pickle format). torchvision compares every batch file against the official md5 sums,
    which rejects any re-packed or locally written batches (our tests write real-format batches
    with 20 images). Used only when data.verify_md5=false; check_integrity(path, None) is a
    pure existence check."""

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


class TorchvisionDataModule(ImageDataModule):
    dataset_cls: type
    folder: str  # where torchvision expects the files, relative to root (for the error message)
    native_size: int
    native_channels: int
    classes: list[str]

    def __init__(self, cfg: DataConfig):
        super().__init__(cfg)
        if cfg.resize == "pad" and cfg.image_size < self.native_size:
            raise ValueError(f"resize='pad' needs image_size >= {self.native_size} for {cfg.name}, got {cfg.image_size}")
        self._set_meta(self.classes, cfg.channels or self.native_channels)

    def _dataset(self, train: bool, download: bool):
        try:
            return self.dataset_cls(self.cfg.root, train=train, download=download)
        except RuntimeError:  # torchvision's "Dataset not found (or corrupted)"
            where = os.path.abspath(os.path.join(self.cfg.root, self.folder))
            raise FileNotFoundError(
                f"{self.cfg.name} files not found or incomplete at {where}{self._hint(where)}; "
                "set data.download=true or place the files there"
            ) from None

    def _hint(self, where: str) -> str:
        return ""

    def prepare_data(self) -> None:
        # Lightning runs this once per node before setup(): the place to download.
        if self.cfg.download:
            for train in (True, False):
                self._dataset(train, download=True)

    @staticmethod
    def _arrays(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(ds.data)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # -> [N,C,H,W] uint8
        return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)

    def _build_splits(self) -> None:
        # download=cfg.download also covers setup() called without prepare_data(); it is a no-op
        # when the files are already there.
        x, y = self._arrays(self._dataset(True, self.cfg.download))
        x_test, y_test = self._arrays(self._dataset(False, self.cfg.download))
        tf = ImageTransform(self.cfg.image_size, self.cfg.resize, self.cfg.channels)
        tr, va, _ = stratified_split(y, self.cfg.val_fraction, 0.0, self.cfg.split_seed)
        self.train_set = TensorImageDataset(x[tr], y[tr], tf)
        self.val_set = TensorImageDataset(x[va], y[va], tf)
        self.test_set = TensorImageDataset(x_test, y_test, tf)


class MNISTDataModule(TorchvisionDataModule):
    dataset_cls = datasets.MNIST
    folder = "MNIST/raw"
    native_size, native_channels = 28, 1
    classes = [str(d) for d in range(10)]  # same names as mnist5k


class FashionMNISTDataModule(TorchvisionDataModule):
    dataset_cls = datasets.FashionMNIST
    folder = "FashionMNIST/raw"
    native_size, native_channels = 28, 1
    classes = list(datasets.FashionMNIST.classes)


class CIFAR10DataModule(TorchvisionDataModule):
    folder = "cifar-10-batches-py"
    native_size, native_channels = 32, 3
    classes = CIFAR10_CLASSES  # known before the files are read (batches.meta holds the same list)

    def __init__(self, cfg: DataConfig):
        self.dataset_cls = datasets.CIFAR10 if cfg.verify_md5 else CIFAR10NoMD5
        super().__init__(cfg)

    def _hint(self, where: str) -> str:
        if self.cfg.verify_md5 and os.path.isdir(where):
            return " (files that are not the official ones fail the md5 check; data.verify_md5=false skips it)"
        return ""
