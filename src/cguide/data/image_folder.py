"""Any image folder with one subfolder per class (root/<class>/<image>), split seeded + stratified.

What is read, and how (checked once, up front, when the DataModule is built; each problem is one error line):

- Classes are the subfolders of root, sorted; images are the files below each, at any depth, with an image
  extension (torchvision's: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp, any case), in sorted walk order.
- Hidden entries (a name starting with '.') are ignored at every level: `.thumbnails/` is no class, an empty
  `.ipynb_checkpoints/` is no empty class, macOS `._x.png` files are not images.
- Symbolic links below root are not followed (the root itself may be one): a link can lead out of the folder or
  back into it (a loop `a/up -> ..` made 24 images into 984 with wrong labels), so one is refused with a line
  naming it rather than silently read or dropped.
- Every image is decoded completely, so a truncated or damaged file is named before any training (not when a
  batch meets it, after a checkpoint is written). Images over PIL's decompression-bomb limit are refused with
  their size.
- Pixel values by mode: 8-bit modes (L, RGB, P, RGBA, ...) / 255 as before; 16-bit grey (PIL's I;16 modes,
  e.g. 16-bit PNG and TIFF) / 65535; 32-bit float (mode F, e.g. float TIFF) as they are, which must lie in
  [0, 1] (0 black, 1 white; anything else, NaN included, is refused: no range is guessed); 32-bit integer
  images (mode I) are refused, their range being unknown. PIL itself reads 16-bit RGB as 8-bit RGB.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.transforms.functional import pil_to_tensor

from .base import ImageDataModule
from .config import DataConfig
from .splits import stratified_split
from .transforms import ImageTransform

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")  # unsigned 16-bit grey: / 65535
FLOAT_MODE = "F"  # 32-bit float grey: values used as they are, must lie in [0, 1]
GREY_MODES = ("1", "L", "I", FLOAT_MODE, *SIXTEEN_BIT)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def to_unit(img: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image -> [channels, H, W]: uint8 (0..255) for 8-bit modes, float in [0, 1] for 16-bit and float.

    8-bit modes take the same path as torchvision's loader did (RGB first, then the wanted mode), so their
    pixels are bit for bit what they were."""
    if img.mode in SIXTEEN_BIT or img.mode == FLOAT_MODE:
        a = np.asarray(img).astype(np.float32)
        x = torch.from_numpy(a / np.float32(65535.0) if img.mode in SIXTEEN_BIT else a).unsqueeze(0)
        return x.expand(3, -1, -1).contiguous() if channels == 3 else x
    if img.mode == "I":  # refused by the folder check; a guard for direct use
        raise ValueError("32-bit integer images have no known range; save them as 8- or 16-bit images")
    pil_mode = "L" if channels == 1 else "RGB"
    if img.mode != pil_mode:
        img = img.convert("RGB")
        if pil_mode != "RGB":
            img = img.convert(pil_mode)
    return pil_to_tensor(img)


class _PILToModel:
    """PIL image -> float [C,S,S] in [-1,1]; picklable for DataLoader workers."""

    def __init__(self, image_size: int, mode: str, channels: int):
        self.channels = channels
        self.tensor_tf = ImageTransform(image_size, mode)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.tensor_tf(to_unit(img, self.channels))


def _open_loaded(path: str) -> Image.Image:
    with Image.open(path) as img:
        img.load()  # the pixels stay in memory when the file closes
        return img


class FolderDataset(Dataset):
    """(path, class index) pairs -> (transform(PIL image), target_transform(index)); samples/targets/classes as
    torchvision's ImageFolder has them. Images are passed on in their own mode (no RGB conversion first, which
    would clip 16-bit and float pixels)."""

    def __init__(self, classes: list[str], samples: list[tuple[str, int]]):
        self.classes = classes
        self.samples = samples
        self.targets = [y for _, y in samples]
        self.transform: Optional[Callable] = None
        self.target_transform: Optional[Callable] = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, y = self.samples[i]
        img = _open_loaded(path)
        return (self.transform(img) if self.transform else img), \
            (self.target_transform(y) if self.target_transform else y)


def _as_long(y: int) -> torch.Tensor:
    return torch.tensor(y, dtype=torch.long)


def _listing(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


@dataclass
class _Walk:
    classes: list[str]
    samples: list[tuple[str, int]]
    links: list[str]  # symbolic links below root (relative paths), never followed


def _walk(root: str, where: str) -> _Walk:
    """Classes, images and symlinks below root; hidden entries skipped; nothing followed through a link."""
    def unreadable(err: OSError):
        raise ValueError(f"image folder {where}: cannot read {err.filename} ({err.strerror}); make it readable "
                         "or remove it") from None

    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise ValueError(f"image folder root {where} cannot be read ({e.strerror}); make it readable, or set "
                         "data.root to another folder") from None
    classes, links = [], []
    for e in entries:
        if _hidden(e.name):
            continue
        if e.is_symlink():
            if e.is_dir():  # (files in root itself are no images of any class, linked or not)
                links.append(f"{e.name} -> {os.readlink(e.path)}")
        elif e.is_dir(follow_symlinks=False):
            classes.append(e.name)
    samples = []
    for idx, c in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, c), onerror=unreadable, followlinks=False):
            for d in list(dirnames):
                full = os.path.join(dirpath, d)
                if _hidden(d) or os.path.islink(full):
                    dirnames.remove(d)  # not descended into
                    if not _hidden(d):
                        links.append(f"{os.path.relpath(full, root)} -> {os.readlink(full)}")
            files = []
            for f in filenames:
                full = os.path.join(dirpath, f)
                if _hidden(f) or not f.lower().endswith(IMG_EXTENSIONS):
                    continue
                if os.path.islink(full):
                    links.append(f"{os.path.relpath(full, root)} -> {os.readlink(full)}")
                else:
                    files.append(f)
            found.append((dirpath, files))
        # torchvision's order: sorted walk entries, sorted names in each
        samples += [(os.path.join(d, f), idx) for d, fs in sorted(found) for f in sorted(fs)]
    return _Walk(classes, samples, links)


_BOMB = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")


def _problem(path: str) -> Optional[tuple[str, str]]:
    """(kind, detail) when the file cannot be trained on, else None; decodes the whole image."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == FLOAT_MODE:
                a = np.asarray(img)
                if not np.isfinite(a).all():
                    return "float", "non-finite values"
                if a.size and (a.min() < 0.0 or a.max() > 1.0):
                    return "float", f"values in [{a.min():.4g}, {a.max():.4g}]"
            elif mode == "I" or (mode.startswith("I;") and mode not in SIXTEEN_BIT):
                return "int", f"mode {mode}"
    except Image.DecompressionBombError as e:
        m = _BOMB.search(str(e))
        return "large", (f"{int(m.group(1)):,} pixels, over PIL's decompression-bomb limit of {int(m.group(2)):,}"
                         if m else f"PIL's decompression-bomb check: {e}")
    except UnidentifiedImageError:
        return "unreadable", ""
    except Exception as e:  # noqa: BLE001 -- truncated data, bad chunks, decoder errors: cannot be trained on
        return "damaged", " ".join(str(e).split()) or type(e).__name__
    return None


def _problem_line(where: str, kind: str, bad: list[tuple[str, str]]) -> str:
    names = _listing([p for p, _ in bad])
    first, detail = bad[0]
    n = len(bad)
    if kind == "unreadable":  # catalogue row unreadable-image
        return f"image folder {where}: {n} file(s) are not readable images ({names}); remove or replace them"
    if kind == "damaged":
        return (f"image folder {where}: {n} image file(s) are truncated or damaged and cannot be decoded "
                f"({first}: {detail}{'; ...' if n > 1 else ''}); remove or replace them")
    if kind == "large":
        return (f"image folder {where}: {n} image(s) are too large to decode ({first}: {detail}"
                f"{'; ...' if n > 1 else ''}); downscale them (they are resized to data.image_size anyway) or "
                "remove them")
    if kind == "float":
        return (f"image folder {where}: {n} 32-bit float image(s) are not in [0, 1] ({first}: {detail}"
                f"{'; ...' if n > 1 else ''}); float images are read as 0 = black, 1 = white: rescale them to "
                "[0, 1], or save them as 8- or 16-bit images")
    return (f"image folder {where}: {n} image(s) are 32-bit integer images ({first}: {detail}"
            f"{'; ...' if n > 1 else ''}), whose range is not known; save them as 8- or 16-bit images "
            "(16-bit are read as 0..65535), or as 32-bit float in [0, 1]")


_ORDER = ("large", "unreadable", "damaged", "float", "int")


def scan_image_folder(root: str) -> FolderDataset:
    """Index root/<class>/<image> and decode every image; one clear error line for each way it can be wrong."""
    where = os.path.abspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder root {where} does not exist (set data.root)")
    if not os.path.isdir(root):
        what = "a file" if os.path.isfile(root) else "not a folder"
        raise ValueError(f"image folder root {where} is {what}, not a folder of class subfolders; set data.root "
                         "to the folder that holds root/<class>/<image>")
    walk = _walk(root, where)
    if walk.links:
        raise ValueError(f"image folder {where}: {len(walk.links)} symbolic link(s) inside it ({_listing(walk.links)}), "
                         "which are not followed (they can lead out of the folder or loop back into it); replace "
                         "each with the folder or file it points to, or remove it")
    if not walk.classes:
        raise ValueError(f"image folder {where} has no class subfolders (expected root/<class>/<image>)")
    counts = torch.bincount(torch.as_tensor([y for _, y in walk.samples], dtype=torch.long),
                            minlength=len(walk.classes))
    empty = [c for c, n in zip(walk.classes, counts.tolist()) if n == 0]
    if empty:
        raise ValueError(f"image folder {where}: class folders with no images: {', '.join(empty)}")
    bad: dict[str, list[tuple[str, str]]] = {}
    for path, _ in walk.samples:  # found now, not when a batch meets it mid-training or after a checkpoint is written
        problem = _problem(path)
        if problem:
            bad.setdefault(problem[0], []).append((os.path.relpath(path, root), problem[1]))
    for kind in _ORDER:
        if kind in bad:
            raise ValueError(_problem_line(where, kind, bad[kind]))
    return FolderDataset(walk.classes, walk.samples)


class ImageFolderDataModule(ImageDataModule):
    def __init__(self, cfg: DataConfig):
        super().__init__(cfg)
        # Scanning and decoding once gives class names + early errors before setup.
        self._folder = scan_image_folder(cfg.root)
        channels = cfg.channels
        if channels is None:  # native: look at the first image
            with Image.open(self._folder.samples[0][0]) as img:
                channels = 1 if img.mode in GREY_MODES else 3
        self._set_meta(self._folder.classes, channels)

    def _build_splits(self) -> None:
        ds = self._folder
        ds.transform = _PILToModel(self.cfg.image_size, self.cfg.resize, self.image_shape[0])
        ds.target_transform = _as_long
        tr, va, te = stratified_split(torch.as_tensor(ds.targets), self.cfg.val_fraction,
                                      self.cfg.test_fraction, self.cfg.split_seed)
        self.train_set, self.val_set, self.test_set = (Subset(ds, idx.tolist()) for idx in (tr, va, te))
