"""Any image folder with one subfolder per class (torchvision ImageFolder), split seeded + stratified."""

from __future__ import annotations

import os

import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision import datasets
from torchvision.transforms.functional import pil_to_tensor

from .base import ImageDataModule
from .config import DataConfig
from .splits import stratified_split
from .transforms import ImageTransform


class _PILToModel:
    """PIL image -> float [C,S,S] in [-1,1]; picklable for DataLoader workers."""

    def __init__(self, image_size: int, mode: str, channels: int):
        self.pil_mode = "L" if channels == 1 else "RGB"
        self.tensor_tf = ImageTransform(image_size, mode)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.tensor_tf(pil_to_tensor(img.convert(self.pil_mode)))


def _as_long(y: int) -> torch.Tensor:
    return torch.tensor(y, dtype=torch.long)


def scan_image_folder(root: str) -> datasets.ImageFolder:
    """Index root/<class>/<image>; one clear error line for each way the folder can be wrong."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder root {os.path.abspath(root)} does not exist (set data.root)")
    if not any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(root)):
        raise ValueError(f"image folder {os.path.abspath(root)} has no class subfolders (expected root/<class>/<image>)")
    ds = datasets.ImageFolder(root, allow_empty=True)
    counts = torch.bincount(torch.as_tensor(ds.targets, dtype=torch.long), minlength=len(ds.classes))
    empty = [c for c, n in zip(ds.classes, counts.tolist()) if n == 0]
    if empty:
        raise ValueError(f"image folder {os.path.abspath(root)}: class folders with no images: {', '.join(empty)}")
    bad = [os.path.relpath(path, root) for path, _ in ds.samples if not _readable(path)]
    if bad:  # found now, not when a batch meets it mid-training or after a checkpoint is written
        raise ValueError(f"image folder {os.path.abspath(root)}: {len(bad)} file(s) are not readable images "
                         f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); remove or replace them")
    return ds


def _readable(path: str) -> bool:
    """PIL's integrity check (headers and chunk checksums, no decoding): empty or foreign files fail it."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # noqa: BLE001 -- any PIL failure means the file cannot be trained on
        return False


class ImageFolderDataModule(ImageDataModule):
    def __init__(self, cfg: DataConfig):
        super().__init__(cfg)
        # Scanning (not decoding) is cheap and gives class names + early errors before setup.
        self._folder = scan_image_folder(cfg.root)
        channels = cfg.channels
        if channels is None:  # native: look at the first image
            with Image.open(self._folder.samples[0][0]) as img:
                channels = 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
        self._set_meta(self._folder.classes, channels)

    def _build_splits(self) -> None:
        ds = self._folder
        ds.transform = _PILToModel(self.cfg.image_size, self.cfg.resize, self.image_shape[0])
        ds.target_transform = _as_long
        tr, va, te = stratified_split(torch.as_tensor(ds.targets), self.cfg.val_fraction,
                                      self.cfg.test_fraction, self.cfg.split_seed)
        self.train_set, self.val_set, self.test_set = (Subset(ds, idx.tolist()) for idx in (tr, va, te))
