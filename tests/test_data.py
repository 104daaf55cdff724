"""Data: embedded MNIST-5k, torchvision sets read from files in their real on-disk formats, image folders."""

from __future__ import annotations

import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cguide.data import (
    DataConfig,
    build_datamodule,
    load_mnist5k,
    stratified_split,
)
from cguide.data.torchvision_sets import CIFAR10_CLASSES


def _rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r.numpy()) for r in x.flatten(1)}


def _scaled(u8: torch.Tensor) -> torch.Tensor:
    """What a native-size image must become: uint8 -> [-1, 1] by the same float ops."""
    return u8.float() / 255.0 * 2.0 - 1.0


# ---------------------------------------------------------------- mnist5k


@pytest.fixture(scope="module")
def mnist5k():
    dm = build_datamodule({"name": "mnist5k"})
    dm.setup("fit")
    return dm


def test_mnist5k_meta_before_setup():
    dm = build_datamodule(DataConfig(name="mnist5k", image_size=20, channels=3))
    assert dm.train_set is None  # nothing loaded yet
    assert dm.num_classes == 10
    assert dm.image_shape == (3, 20, 20)
    assert dm.class_names == [str(d) for d in range(10)]


def test_mnist5k_splits_shapes_range(mnist5k):
    sizes = [len(ds) for ds in (mnist5k.train_set, mnist5k.val_set, mnist5k.test_set)]
    assert sizes == [4000, 500, 500]
    x, y = mnist5k.train_set[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.dim() == 0
    for ds in (mnist5k.train_set, mnist5k.val_set, mnist5k.test_set):
        assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
        # real digits: black background and bright strokes both present
        assert ds.images.min() < -0.99 and ds.images.max() > 0.9


def test_mnist5k_stratified(mnist5k):
    for ds, per_class in ((mnist5k.train_set, 400), (mnist5k.val_set, 50), (mnist5k.test_set, 50)):
        assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10


def test_mnist5k_splits_disjoint_and_cover():
    images, labels = load_mnist5k()
    parts = stratified_split(labels, 0.1, 0.1, seed=0)
    all_idx = torch.cat(parts)
    assert len(all_idx) == 5000 and len(torch.unique(all_idx)) == 5000
    dm = build_datamodule({"name": "mnist5k"})
    dm.setup()
    sets = [_rows(ds.images) for ds in (dm.train_set, dm.val_set, dm.test_set)]
    other = stratified_split(labels, 0.1, 0.1, seed=1)
    assert set(parts[2].tolist()) != set(other[2].tolist())  # the seed picks members, not just their order
    assert sum(len(s) for s in sets) == 5000  # the 5000 digits are distinct, so no image repeats
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_mnist5k_split_deterministic_and_seeded():
    a, b = build_datamodule({"name": "mnist5k"}), build_datamodule({"name": "mnist5k"})
    xa, ya = a.test_images()
    xb, yb = b.test_images()
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = build_datamodule({"name": "mnist5k", "split_seed": 1})
    xc, _ = c.test_images()
    assert not torch.equal(xa, xc)


def test_mnist5k_resize_is_antialiased_bilinear(mnist5k):
    images, labels = load_mnist5k()
    _, _, te = stratified_split(labels, 0.1, 0.1, seed=0)
    want = F.interpolate(images[te[:8]].float() / 255, size=(16, 16), mode="bilinear", antialias=True) * 2 - 1
    got, y = mnist5k.test_images(max_n=8)
    assert got.shape == (8, 1, 16, 16)
    assert torch.equal(y, labels[te[:8]])
    torch.testing.assert_close(got, want)


def test_mnist5k_pad_mode_zero_border():
    dm = build_datamodule({"name": "mnist5k", "image_size": 32, "resize": "pad"})
    assert dm.image_shape == (1, 32, 32)
    x, y = dm.test_images()
    assert x.shape == (500, 1, 32, 32)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, :, border] == -1).all()
    images, labels = load_mnist5k()
    _, _, te = stratified_split(labels, 0.1, 0.1, seed=0)
    assert torch.equal(x[:, :, 2:30, 2:30], _scaled(images[te]))  # centred, unresized


def test_config_validation():
    with pytest.raises(ValueError, match="image_size >= 28"):
        build_datamodule({"name": "mnist5k", "image_size": 16, "resize": "pad"})
    with pytest.raises(ValueError, match="data.resize must be one of"):
        DataConfig(resize="crop")
    with pytest.raises(ValueError, match="val_fraction"):
        DataConfig(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="unknown data config keys \\['imgsize'\\]"):
        build_datamodule({"name": "mnist5k", "imgsize": 16})


def test_dataloaders(mnist5k):
    train = mnist5k.train_dataloader()
    assert len(train) == 4000 // 128  # drop_last
    x, y = next(iter(train))
    assert x.shape == (128, 1, 16, 16) and y.shape == (128,) and y.dtype == torch.int64
    assert not torch.equal(y, mnist5k.train_set.labels[:128])  # shuffled
    xv, yv = next(iter(mnist5k.val_dataloader()))
    assert torch.equal(yv, mnist5k.val_set.labels[:128]) and torch.equal(xv, mnist5k.val_set.images[:128])
    assert sum(len(b[1]) for b in mnist5k.test_dataloader()) == 500  # no drop_last


def test_train_split_smaller_than_batch_is_an_error():
    dm = build_datamodule({"name": "mnist5k", "batch_size": 5000})
    dm.setup()
    with pytest.raises(ValueError, match="fewer than data.batch_size=5000"):
        dm.train_dataloader()


def test_unknown_dataset():
    with pytest.raises(ValueError) as e:
        build_datamodule({"name": "imagenet"})
    assert str(e.value) == "unknown dataset 'imagenet'; known: mnist5k, mnist, fashion_mnist, cifar10, image_folder"


# ---------------------------------------------------------------- torchvision sets, real file formats


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (LeCun's MNIST format): magic 0x0000 0x08 (ubyte) ndim, big-endian uint32 dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % 10


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_like_from_idx_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    xtr, ytr = _fake_images(20, (28, 28), seed=0)
    xte, yte = _fake_images(10, (28, 28), seed=1)
    _write_idx(raw / "train-images-idx3-ubyte", xtr)
    _write_idx(raw / "train-labels-idx1-ubyte", ytr)
    _write_idx(raw / "t10k-images-idx3-ubyte", xte)
    _write_idx(raw / "t10k-labels-idx1-ubyte", yte)

    cfg = {"name": name, "root": str(tmp_path), "image_size": 28, "batch_size": 4, "val_fraction": 0.5}
    dm = build_datamodule(cfg)
    assert dm.num_classes == 10 and dm.image_shape == (1, 28, 28)
    if name == "fashion_mnist":
        assert dm.class_names[0] == "T-shirt/top" and dm.class_names[9] == "Ankle boot"
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 10, 10)
    assert torch.bincount(dm.val_set.labels, minlength=10).tolist() == [1] * 10  # stratified

    x, y = dm.test_images()  # official test set, in file order
    assert torch.equal(y, torch.from_numpy(yte))
    assert torch.equal(x, _scaled(torch.from_numpy(xte)).unsqueeze(1))
    # train + val together are exactly the train file
    tv = torch.cat([torch.stack([ds[i][0] for i in range(len(ds))]) for ds in (dm.train_set, dm.val_set)])
    assert _rows(tv) == _rows(_scaled(torch.from_numpy(xtr)))

    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (4, 1, 28, 28) and yb.dtype == torch.int64

    small = build_datamodule({**cfg, "image_size": 16})
    xs, _ = small.test_images(max_n=3)
    assert xs.shape == (3, 1, 16, 16) and xs.min() >= -1 and xs.max() <= 1


def _write_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py in the real pickle format: rows of 3072 uint8 (R plane, G, B), 'labels' list."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        x, _ = _fake_images(4, (3 * 32 * 32,), seed=i)
        y = (np.arange(4) + 4 * (i - 1)) % 10  # 20 train images, two per class
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i} of 5", "data": x, "labels": y.tolist()}, f)
    xte, yte = _fake_images(10, (3 * 32 * 32,), seed=9)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "data": xte, "labels": yte.tolist()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": 4, "num_vis": 3072}, f)
    return xte, yte


def test_torchvision_cifar10_from_pickle_batches(tmp_path):
    xte, yte = _write_cifar(tmp_path)
    cfg = {"name": "cifar10", "root": str(tmp_path), "image_size": 32, "batch_size": 4, "val_fraction": 0.5}
    # Our batches are real-format but not the official files, so torchvision's md5 check rejects them.
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*data.verify_md5=false skips it"):
        build_datamodule(cfg).setup()

    dm = build_datamodule({**cfg, "verify_md5": False})
    assert dm.image_shape == (3, 32, 32) and dm.class_names == CIFAR10_CLASSES
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 10, 10)
    x, y = dm.test_images()
    assert torch.equal(y, torch.from_numpy(yte))
    # channel planes land in the right place: row layout is [R(1024), G(1024), B(1024)]
    assert torch.equal(x, _scaled(torch.from_numpy(xte).view(10, 3, 32, 32)))

    grey = build_datamodule({**cfg, "verify_md5": False, "image_size": 16, "channels": 1})
    assert grey.image_shape == (1, 16, 16)
    assert grey.test_images(max_n=2)[0].shape == (2, 1, 16, 16)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_torchvision_missing_files_error(tmp_path, name, folder):
    dm = build_datamodule({"name": name, "root": str(tmp_path / "nowhere")})
    dm.prepare_data()  # download=false: must not try the network
    with pytest.raises(FileNotFoundError) as e:
        dm.setup()
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "nowhere" / folder) in msg
    assert "set data.download=true or place the files there" in msg
    assert "verify_md5" not in msg  # the md5 hint is only for files that are there


# ---------------------------------------------------------------- image folder


def _write_folder(root: Path, classes: dict[str, int], size=(20, 12), mode="RGB") -> None:
    rng = np.random.default_rng(0)
    for c, n in classes.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")


def test_image_folder_loads_and_splits(tmp_path):
    _write_folder(tmp_path, {"cat": 5, "dog": 5, "owl": 5})
    cfg = {"name": "image_folder", "root": str(tmp_path), "image_size": 8, "batch_size": 2,
           "val_fraction": 0.2, "test_fraction": 0.2}
    dm = build_datamodule(cfg)
    assert dm.class_names == ["cat", "dog", "owl"] and dm.num_classes == 3
    assert dm.image_shape == (3, 8, 8)  # RGB detected from the first image, before setup
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 3, 3)
    x, y = dm.test_images()
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert sorted(y.tolist()) == [0, 1, 2]  # stratified: one per class
    paths = [set(dm.train_set.dataset.samples[i][0] for i in ds.indices) for ds in (dm.train_set, dm.val_set, dm.test_set)]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (2, 3, 8, 8) and yb.dtype == torch.int64

    grey = build_datamodule({**cfg, "channels": 1})
    assert grey.image_shape == (1, 8, 8) and grey.test_images(max_n=1)[0].shape == (1, 1, 8, 8)


def test_image_folder_pad_grey(tmp_path):
    _write_folder(tmp_path, {"a": 3, "b": 3}, size=(6, 6), mode="L")
    dm = build_datamodule({"name": "image_folder", "root": str(tmp_path), "image_size": 8, "resize": "pad",
                           "batch_size": 1, "val_fraction": 0.0, "test_fraction": 0.4})
    assert dm.image_shape == (1, 8, 8)  # greyscale detected
    x, _ = dm.test_images()
    assert x.shape == (2, 1, 8, 8)
    assert (x[:, :, 0] == -1).all() and (x[:, :, -1] == -1).all() and (x[..., 0] == -1).all() and (x[..., -1] == -1).all()
    pixels = {bytes(_scaled(torch.from_numpy(np.array(Image.open(p)))).numpy()) for p, _ in dm.test_set.dataset.samples}
    assert all(bytes(xi[0, 1:7, 1:7].numpy()) in pixels for xi in x)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_datamodule({"name": "image_folder", "root": str(tmp_path / "missing")})
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "loose.png")
    with pytest.raises(ValueError, match="no class subfolders"):
        build_datamodule({"name": "image_folder", "root": str(tmp_path / "flat")})
    _write_folder(tmp_path / "some_empty", {"full": 2})
    (tmp_path / "some_empty" / "empty").mkdir()
    (tmp_path / "some_empty" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="class folders with no images: empty$"):
        build_datamodule({"name": "image_folder", "root": str(tmp_path / "some_empty")})


# ---------------------------------------------------------------- image folder: what cguide.train reads (issue #28)


class _Seen:
    """A Lightning callback: every training batch, the class names and split sizes cguide.train used."""

    def __init__(self):
        import lightning as L

        class Seen(L.Callback):
            def on_train_batch_start(cb, trainer, module, batch, batch_idx):
                self.batches.append((batch[0].clone(), batch[1].clone()))
                dm = trainer.datamodule
                self.classes = list(dm.class_names)
                self.sizes = tuple(len(s) for s in (dm.train_set, dm.val_set, dm.test_set))

        self.callback, self.batches, self.classes, self.sizes = Seen(), [], None, None


def _train_on_folder(root: Path, tmp_path: Path, *over: str) -> _Seen:
    """cguide.train task=judge data=image_folder on root: one smoke step that sees the whole train split."""
    from cguide.train import train
    from helpers.config import TINY, compose_cfg

    seen = _Seen()
    cfg = compose_cfg("train", [*TINY, "task=judge", "data=image_folder", f"data.root={root}", "data.image_size=8",
                                "data.batch_size=8", "data.val_fraction=0.25", "data.test_fraction=0.25",
                                "trainer.fast_dev_run=true", *over], tmp_path / "run")
    train(cfg, extra_callbacks=[seen.callback])
    return seen


def _match(seen: _Seen, expected: dict[str, list[torch.Tensor]], classes: list[str]) -> None:
    """Every image trained on is, to float rounding, one of its class's expected images."""
    n = 0
    for xb, yb in seen.batches:
        for x, y in zip(xb, yb):
            cands = expected[classes[int(y)]]
            assert any(torch.allclose(x, e, atol=1e-5, rtol=0) for e in cands), \
                f"class {classes[int(y)]}: got pixels {x.flatten()[:6].tolist()}..., none of its images"
            n += 1
    assert n == seen.sizes[0] and n > 0


def test_image_folder_16bit_and_float_images_keep_their_range(tmp_path):
    """16-bit PNGs are / 65535 (convert('L') clipped them: every pixel +1.0) and float TIFFs in [0, 1] are used as
    they are (they became -1.0); each image's values come through cguide.train's own batches."""
    root = tmp_path / "images"
    expected = {"a16": [], "bfloat": []}
    (root / "a16").mkdir(parents=True)
    (root / "bfloat").mkdir()
    ramp = np.arange(64).reshape(8, 8)
    for k in range(4):
        a = (ramp * 1000 + k * 7).astype(np.uint16)  # 0 .. 63021, most of the 16-bit range
        Image.fromarray(a).save(root / "a16" / f"{k}.png")
        expected["a16"].append(torch.from_numpy(a.astype(np.float64) / 65535 * 2 - 1).float()[None])
        f = (ramp / 63 * 0.8 + k * 0.05).astype(np.float32)  # 0 .. 0.95
        Image.fromarray(f, "F").save(root / "bfloat" / f"{k}.tif")
        expected["bfloat"].append(torch.from_numpy(f.astype(np.float64) * 2 - 1).float()[None])
    assert Image.open(root / "a16" / "0.png").mode == "I;16" and Image.open(root / "bfloat" / "0.tif").mode == "F"
    seen = _train_on_folder(root, tmp_path, "data.batch_size=4")
    assert seen.classes == ["a16", "bfloat"] and seen.sizes == (4, 2, 2)
    _match(seen, expected, seen.classes)
    x = torch.cat([b[0] for b in seen.batches])
    assert x.std() > 0.3  # not constant images
    # 16-bit images given to an RGB model: the same values in all three channels
    rgb = _train_on_folder(root, tmp_path / "rgb", "data.batch_size=4", "data.channels=3")
    _match(rgb, {k: [e.expand(3, -1, -1) for e in v] for k, v in expected.items()}, rgb.classes)


def test_image_folder_hidden_entries_are_ignored(tmp_path):
    """.thumbnails/ (with images) is no class, an empty .ipynb_checkpoints/ is no empty class, and hidden files and
    folders inside a class are not its images."""
    root = tmp_path / "images"
    _write_folder(root, {"a": 4, "b": 4}, size=(8, 8), mode="L")
    _write_folder(root / ".thumbnails", {"a": 2}, size=(8, 8), mode="L")  # .thumbnails/a/*.png
    Image.new("L", (8, 8)).save(root / ".thumbnails" / "t.png")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "a" / ".cache").mkdir()
    Image.new("L", (8, 8), 255).save(root / "a" / ".cache" / "x.png")
    (root / "b" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # not an image
    seen = _train_on_folder(root, tmp_path, "data.batch_size=4")
    assert seen.classes == ["a", "b"] and seen.sizes == (4, 2, 2)


def test_image_folder_symlinks_are_refused_not_followed(tmp_path):
    """A loop (a/up -> ..) made 24 images into 984 with wrong labels; links out of the folder, to a class folder
    or to a file, are refused too, by name, before anything is trained."""
    from cguide.train import train
    from helpers.config import TINY, compose_cfg

    outside = tmp_path / "elsewhere"
    _write_folder(outside, {"z": 2}, size=(8, 8), mode="L")
    cases = {"loop": ("a/up", ".."), "class": ("c", str(outside / "z")),
             "file": ("b/linked.png", str(outside / "z" / "0.png"))}
    for name, (link, target) in cases.items():
        root = tmp_path / name
        _write_folder(root, {"a": 12, "b": 12}, size=(8, 8), mode="L")
        os.symlink(target, root / link)
        cfg = compose_cfg("train", [*TINY, "task=judge", "data=image_folder", f"data.root={root}",
                                    "data.image_size=8", "trainer.fast_dev_run=true"], tmp_path / "run")
        with pytest.raises(ValueError) as e:
            train(cfg)
        assert str(e.value) == (f"image folder {root}: 1 symbolic link(s) inside it ({link} -> {target}), which are "
                                "not followed (they can lead out of the folder or loop back into it); replace each "
                                "with the folder or file it points to, or remove it"), name
    # the root itself may be a link (data.root=<link to the folder>)
    os.symlink(outside, tmp_path / "root_link")
    (outside / "y").mkdir()
    for i in range(2):
        Image.new("L", (8, 8), 9).save(outside / "y" / f"{i}.png")
    from cguide.data import build_datamodule

    assert build_datamodule({"name": "image_folder", "root": str(tmp_path / "root_link")}).class_names == ["y", "z"]


def test_image_folder_unreadable_root_is_one_line(tmp_path, monkeypatch):
    """A root that cannot be listed (no read permission: tests run as root, so os.scandir is made to refuse)."""
    from cguide.train import train
    from helpers.config import TINY, compose_cfg

    root = tmp_path / "images"
    _write_folder(root, {"a": 2}, size=(8, 8), mode="L")
    real = os.scandir

    def scandir(path="."):
        if os.path.abspath(path) == str(root):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    cfg = compose_cfg("train", [*TINY, "task=judge", "data=image_folder", f"data.root={root}",
                                "trainer.fast_dev_run=true"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"^image folder root .*images cannot be read \(Permission denied\); make "
                                         r"it readable, or set data.root to another folder$"):
        train(cfg)
    root = root / "a"  # now a class folder below the root cannot be listed
    with pytest.raises(ValueError, match=r"^image folder .*images: cannot read .*images/a \(Permission denied\); "
                                         r"make it readable or remove it$"):
        train(cfg)


def test_image_folder_problems_are_named_by_kind(tmp_path):
    """Each kind of bad image is named with what is wrong: a 32-bit integer TIFF, float values outside [0, 1] or
    NaN, a damaged PNG, several at once (the first three names)."""
    from cguide.data import build_datamodule

    def refused(root):
        with pytest.raises(ValueError) as e:
            build_datamodule({"name": "image_folder", "root": str(root)})
        return str(e.value)

    root = tmp_path / "int32"
    _write_folder(root, {"a": 2, "b": 2}, size=(8, 8), mode="L")
    Image.fromarray(np.full((8, 8), 70000, np.int32), "I").save(root / "a" / "deep.tif")
    assert refused(root).endswith("1 image(s) are 32-bit integer images (a/deep.tif: mode I), whose range is not "
                                  "known; save them as 8- or 16-bit images (16-bit are read as 0..65535), or as "
                                  "32-bit float in [0, 1]")
    root = tmp_path / "nan"
    _write_folder(root, {"a": 2, "b": 2}, size=(8, 8), mode="L")
    Image.fromarray(np.full((8, 8), np.nan, np.float32), "F").save(root / "b" / "nan.tif")
    assert "1 32-bit float image(s) are not in [0, 1] (b/nan.tif: non-finite values)" in refused(root)
    root = tmp_path / "damaged"
    _write_folder(root, {"a": 5, "b": 2}, size=(8, 8), mode="L")
    for i in range(5):
        p = root / "a" / f"{i}.png"
        data = bytearray(p.read_bytes())
        data[60:70] = b"\xff" * 10  # inside IDAT: the header reads, decoding fails
        p.write_bytes(bytes(data))
    msg = refused(root)
    assert re.fullmatch(rf"image folder {re.escape(str(root))}: 5 image file\(s\) are truncated or damaged and "
                        r"cannot be decoded \(a/0\.png: .+; \.\.\.\); remove or replace them", msg), msg


def test_truncated_image_stops_the_pipeline_before_any_training(tmp_path, cfg_pipeline):
    """Issue #28: a truncated JPEG passed the up-front check, the pipeline trained all three nets, wrote judge.ckpt
    and crashed in the judge's test (and every rerun reused that judge and crashed again). Now it is named
    before the first net trains, and no checkpoint is written."""
    from cguide.pipeline import run_pipeline

    root = tmp_path / "images"
    _write_folder(root, {"a": 20, "b": 20}, size=(8, 8), mode="L")
    Image.effect_noise((64, 64), 60).save(root / "a" / "cut.jpg")
    (root / "a" / "cut.jpg").write_bytes((root / "a" / "cut.jpg").read_bytes()[:400])
    with pytest.raises(ValueError, match=r"^image folder .*images: 1 image file\(s\) are truncated or damaged and "
                                         r"cannot be decoded \(a/cut\.jpg: image file is truncated"):
        run_pipeline(cfg_pipeline("data=image_folder", f"data.root={root}", "data.image_size=8"))
    assert not list((tmp_path / "pipeline").rglob("*.ckpt"))
