"""guided-diffusion's evaluation format: reference batches (arr_0 uint8 NHWC, arr_1 labels, mu / sigma) read
as the real side of the metrics, malformed ones refused in one line, and sample batches written atomically
so its evaluator.py can score them."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from cguide.io.npz_batches import read_reference_batch, to_uint8_nhwc, write_sample_batch
from cguide.metrics import MetricSettings, compute_metrics, feature_stats, frechet_distance
from helpers.adm import write_reference


def test_reference_batch_is_read_as_uint8_nchw(tmp_path):
    path = write_reference(tmp_path / "ref.npz", n=6, size=4, stats_dim=5)
    ref = read_reference_batch(path)
    with np.load(path) as z:
        arr, labels, mu = z["arr_0"], z["arr_1"], z["mu"]
    assert ref.images.dtype == torch.uint8 and ref.images.shape == (6, 3, 4, 4)
    assert np.array_equal(ref.images.permute(0, 2, 3, 1).numpy(), arr)
    assert ref.labels.tolist() == labels.tolist() and ref.fid_stats["sigma"].shape == (5, 5)
    assert np.array_equal(ref.fid_stats["mu"], mu)
    unlabelled = read_reference_batch(write_reference(tmp_path / "u.npz", n=3, size=4, labels=False))
    assert unlabelled.labels is None and unlabelled.fid_stats is None


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _npy(path, array):
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the name
        np.save(f, array)
    return path


MALFORMED = {
    "no-arr_0": (lambda p: _npz(p, images=np.zeros((2, 4, 4, 3), np.uint8)),
                 r"no arr_0 in it \(it holds images\)"),
    "float": (lambda p: _npz(p, arr_0=np.zeros((2, 4, 4, 3), np.float32)), r"arr_0 is float32 \[2, 4, 4, 3\]"),
    "nchw": (lambda p: _npz(p, arr_0=np.zeros((2, 3, 4, 4), np.uint8)), r"arr_0 is uint8 \[2, 3, 4, 4\]"),
    "3-d": (lambda p: _npz(p, arr_0=np.zeros((4, 4, 3), np.uint8)), r"arr_0 is uint8 \[4, 4, 3\]"),
    "labels": (lambda p: _npz(p, arr_0=np.zeros((2, 4, 4, 3), np.uint8), arr_1=np.zeros(3)),
               r"arr_1 \(labels\) is float64 \[3\], not 2 integer labels"),
    "npy": (lambda p: _npy(p, np.zeros(3)), r"a single array float64 \[3\] \(\.npy\), not an \.npz"),
    "text": (lambda p: (p.write_text("not numpy"), p)[1], r"not a readable \.npz \(\w+\)"),
    "truncated": (lambda p: (p.write_bytes(_npz(p, arr_0=np.zeros((2, 4, 4, 3), np.uint8)).read_bytes()[:100]), p)[1],
                  r"not a readable \.npz \(\w+\)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_reference_is_one_clear_line(case, tmp_path):
    make, what = MALFORMED[case]
    path = make(tmp_path / "ref.npz")
    with pytest.raises(ValueError) as e:
        read_reference_batch(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert re.fullmatch(rf"reference batch {re.escape(str(path))}: {what}; expected guided-diffusion's format "
                        r"\(arr_0 = uint8 images \[N, H, W, 3\]\); fix metrics\.reference_npz", msg), msg
    with pytest.raises(FileNotFoundError, match=r"^reference batch not found: .*nope\.npz; download it from "
                                                r"guided-diffusion's evaluations README \(https://.*\), or fix "
                                                r"metrics\.reference_npz$"):
        read_reference_batch(tmp_path / "nope.npz")


def test_sample_batch_round_trips_in_guided_diffusions_format(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 4, 4, generator=g) * 2.2 - 1.1  # beyond [-1, 1] too: clamped
    y = torch.tensor([3, 1, 4, 1, 5])
    path = write_sample_batch(tmp_path / "samples" / "p.npz", x, y)
    with np.load(path) as z:
        assert sorted(z.files) == ["arr_0", "arr_1"]
        arr, labels = z["arr_0"], z["arr_1"]
    # guided-diffusion's image_sample.py: ((x + 1) * 127.5).clamp(0, 255).to(uint8), then NHWC
    want = ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert arr.dtype == np.uint8 and np.array_equal(arr, want) and labels.tolist() == y.tolist()
    assert torch.equal(read_reference_batch(path).images, torch.from_numpy(want).permute(0, 3, 1, 2))
    assert to_uint8_nhwc(x[:, :1]).shape == (5, 4, 4, 3)  # grey -> RGB
    assert [p.name for p in path.parent.iterdir()] == ["p.npz"]  # no temp file left beside it


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_sample_batch(tmp_path / "p.npz", torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
    before = path.read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError):
        write_sample_batch(path, torch.ones(2, 3, 4, 4), torch.tensor([0, 1]))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.npz"]


class RecordingJudge(nn.Module):
    """Features = the image's pixels as the extractor hands them over (recorded); logits from a fixed layer."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(48, 10)
        self.seen = []

    def features(self, x):
        self.seen.append(x.detach().clone())
        return x.flatten(1)

    def forward(self, x):
        return self.head(x.flatten(1))


def test_reference_images_reach_the_extractor_as_they_are(tmp_path):
    ref = read_reference_batch(write_reference(tmp_path / "ref.npz", n=8, size=4))
    judge = RecordingJudge()
    x = torch.rand(6, 3, 4, 4) * 2 - 1
    s = MetricSettings(names=("fid",), batch_size=100)
    compute_metrics(x, torch.arange(6), (ref.images, ref.labels), judge=judge, settings=s)
    real_seen = judge.seen[-1]  # the judge extractor maps uint8 u to u / 127.5 - 1
    assert real_seen.shape == (8, 3, 4, 4)
    assert torch.equal(((real_seen + 1) * 127.5).round().to(torch.uint8), ref.images)


def test_whole_dataset_statistics_replace_the_real_images_for_fid(tmp_path):
    judge = RecordingJudge()
    x, real = torch.rand(6, 3, 4, 4) * 2 - 1, torch.rand(8, 3, 4, 4) * 2 - 1
    s = MetricSettings(names=("fid", "kid"), batch_size=100)
    a = torch.randn(48, 48, dtype=torch.float64)
    stats = {"mu": torch.randn(48, dtype=torch.float64).numpy(), "sigma": (a @ a.T / 48).numpy()}
    out = compute_metrics(x, torch.arange(6), real, judge=judge, settings=s, real_fid_stats=stats)
    plain = compute_metrics(x, torch.arange(6), real, judge=judge, settings=s)
    f_gen = judge.seen[0].flatten(1)  # the samples' features of the first call
    assert out["fid"] == pytest.approx(frechet_distance(feature_stats(f_gen), stats), rel=1e-9)
    assert out["fid"] != pytest.approx(plain["fid"]) and out["kid_mean"] == plain["kid_mean"]  # KID: the images
    bad = {"mu": stats["mu"][:5], "sigma": stats["sigma"][:5, :5]}
    with pytest.raises(ValueError, match="the real side's FID statistics are 5-d, the extractor's features 48-d"):
        compute_metrics(x, torch.arange(6), real, judge=judge, settings=s, real_fid_stats=bad)


def test_metrics_without_a_judge(tmp_path):
    x, real = torch.rand(4, 3, 4, 4) * 2 - 1, torch.rand(5, 3, 4, 4) * 2 - 1
    out = compute_metrics(x, torch.arange(4), real, judge=None, settings=MetricSettings(names=("nonfinite",)))
    assert out == {"nonfinite": 0.0}
    for names in (("accuracy",), ("fid",)):  # fid: the default extractor is the judge
        with pytest.raises(ValueError, match=r"^metrics accuracy and the judge extractor need a judge classifier"):
            compute_metrics(x, torch.arange(4), real, judge=None, settings=MetricSettings(names=names))
