"""Metric suite: torch-fidelity routines checked against closed forms / scipy, plus suite behaviour
(non-finite handling, real-stats cache, offline Inception, name errors) with small stand-in nets,
and MetricSettings validation."""

import dataclasses
import math
import os

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

import cguide.metrics as M
from cguide.metrics import extractors

K = 4


class StandInJudge(nn.Module):
    """Fixed random conv net with the judge interface; counts the rows that reach features()."""

    def __init__(self, in_channels=1, num_classes=K):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(in_channels, 8, 3, stride=2)
        self.head = nn.Linear(32, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.rows_seen = 0

    def features(self, x):
        self.rows_seen += x.shape[0]
        return nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class PixelJudge(nn.Module):
    """Predicts class round((x[0,0,0] + 1) / 2 * (K - 1)): accuracy is known by construction."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def features(self, x):
        return x.flatten(1)[:, :8]

    def forward(self, x):
        c = ((x[:, 0, 0, 0] + 1) / 2 * (K - 1)).round().long().clamp(0, K - 1)
        return nn.functional.one_hot(c, K).float() * 10


def encode(labels, size=8, channels=1):
    """Images in [-1, 1] whose first pixel encodes `labels` for PixelJudge; the rest is noise."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(len(labels), channels, size, size, generator=g) * 2 - 1
    x[:, 0, 0, 0] = labels.float() / (K - 1) * 2 - 1
    return x


def data(n, m, channels=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g) * 2 - 1
    r = torch.rand(m, channels, size, size, generator=g) * 2 - 1
    return x, torch.arange(n) % K, r, torch.arange(m) % K


def scipy_fid(f1, f2):
    f1, f2 = f1.double().numpy(), f2.double().numpy()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# --- feature-space routines (the ones compute_metrics calls) ---

def test_fid_of_set_against_itself_is_zero():
    f = torch.randn(300, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    s = M.feature_stats(f)
    assert abs(M.frechet_distance(s, s)) < 1e-3 * np.trace(s["sigma"])


@pytest.mark.parametrize("general", [False, True])
def test_fid_matches_scipy_sqrtm(general):
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(300, 16, generator=g)
    # scaled+shifted copy, and a general linear map (non-commuting covariances)
    f2 = f1 @ (torch.randn(16, 16, generator=g) * 0.5) + 0.3 if general else 1.7 * f1 + 0.5
    got = M.frechet_distance(M.feature_stats(f1), M.feature_stats(f2))
    assert got == pytest.approx(scipy_fid(f1, f2), rel=1e-3)
    assert got > 1.0


def test_inception_score_bounds():
    assert M.inception_score(torch.zeros(100, K), splits=1)[0] == pytest.approx(1.0, abs=1e-9)
    one_hot = nn.functional.one_hot(torch.arange(100) % K, K).double() * 50  # confident, balanced
    mean, std = M.inception_score(one_hot, splits=1)
    assert mean == pytest.approx(K, rel=1e-6) and std == 0.0


def test_small_n_guards():
    f = torch.randn(1, 8)
    assert math.isnan(M.frechet_distance(M.feature_stats(f), M.feature_stats(torch.randn(9, 8))))
    assert all(math.isnan(v) for v in M.kernel_inception_distance(f, torch.randn(9, 8)))
    assert all(math.isnan(v) for v in M.precision_recall(f, torch.randn(9, 8)))
    # KID subset and PRC neighbourhood shrink to what 5 samples allow instead of raising
    assert all(math.isfinite(v) for v in M.kernel_inception_distance(torch.randn(5, 8), torch.randn(9, 8)))
    assert all(math.isfinite(v) for v in M.precision_recall(torch.randn(5, 8), torch.randn(9, 8), 10))


# --- suite ---

def test_compute_metrics_all_keys_finite():
    x, y, r, rl = data(64, 80, channels=3, size=32)

    class UniformGuide(nn.Module):
        def forward(self, xb, t):
            return torch.zeros(xb.shape[0], K)

    out = M.compute_metrics(x, y, (r, rl), judge=StandInJudge(3), guide=UniformGuide())
    assert set(out) == {"fid", "fid_inf", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall",
                        "accuracy", "guide_confidence", "classwise_fid", "nonfinite"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values()), out
    assert out["guide_confidence"] == pytest.approx(1 / K)


def test_suite_matches_torch_fidelity_calculate_metrics():
    """Registered 'cguide-judge' extractor via calculate_metrics gives the suite's numbers."""
    x, y, r, rl = data(60, 60)
    judge = StandInJudge()

    class DS(Dataset):
        def __init__(self, t):
            self.t = M.to_uint8_rgb(t)

        def __len__(self):
            return len(self.t)

        def __getitem__(self, i):
            return self.t[i]

    ref = torch_fidelity.calculate_metrics(
        input1=DS(x), input2=DS(r), feature_extractor=M.JUDGE_EXTRACTOR, judge=judge, fid=True, kid=True,
        isc=True, prc=True, cuda=False, cache=False, verbose=False, save_cpu_ram=True, kid_subset_size=50,
        isc_splits=3)
    out = M.compute_metrics(x, y, r, judge=judge, settings=M.MetricSettings(names=("fid", "kid", "is", "prc"),
                                                                            kid_subset_size=50, isc_splits=3))
    assert out["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)
    assert out["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4, abs=1e-9)
    assert out["is_mean"] == pytest.approx(ref["inception_score_mean"], rel=1e-6)
    assert (out["precision"], out["recall"]) == (ref["precision"], ref["recall"])
    # torch-fidelity's eval()/requires_grad_(False) on the extractor must not reach the caller's judge
    assert judge.training and all(p.requires_grad for p in judge.parameters())


def test_accuracy_and_guide_confidence_controlled():
    targets = torch.arange(40) % K
    encoded = targets.clone()
    encoded[:10] = (encoded[:10] + 1) % K  # 10 of 40 images show the wrong class
    x = encode(encoded)

    class Guide(nn.Module):
        def forward(self, xb, t):
            assert t.dtype == torch.int64 and (t == 0).all()
            return torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1])).expand(xb.shape[0], K)

    out = M.compute_metrics(x, targets, x, judge=PixelJudge(), guide=Guide(),
                            settings=M.MetricSettings(names=("accuracy", "guide_confidence")))
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["guide_confidence"] == pytest.approx((0.7 * 10 + 0.1 * 30) / 40)  # 10 targets of class 0


def test_nonfinite_share_and_exclusion():
    targets = torch.arange(40) % K
    x = encode(targets)
    x[[1, 5, 9]] = float("nan")
    x[3, 0, 2, 2] = float("inf")  # one bad pixel is enough
    out = M.compute_metrics(x, targets, x[10:], judge=PixelJudge(),
                            settings=M.MetricSettings(names=("nonfinite", "accuracy", "fid", "is")))
    assert out["nonfinite"] == pytest.approx(4 / 40)
    assert out["accuracy"] == 1.0  # non-finite rows would have predicted garbage
    assert math.isfinite(out["fid"]) and math.isfinite(out["is_mean"])

    out = M.compute_metrics(torch.full_like(x, float("nan")), targets, (x, targets), judge=PixelJudge())
    assert out["nonfinite"] == 1.0
    assert all(math.isnan(v) for k, v in out.items() if k != "nonfinite")


def test_real_stats_cached_once_and_reused(tmp_path):
    x, y, r, rl = data(32, 50)
    judge = StandInJudge()
    kw = dict(judge=judge, settings=M.MetricSettings(real_stats_cache=str(tmp_path),
                                                     names=("fid", "kid", "prc", "classwise_fid")))
    first = M.compute_metrics(x, y, (r, rl), **kw)
    assert judge.rows_seen == 32 + 50
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".pt"), files
    mtime = os.path.getmtime(tmp_path / files[0])

    judge.rows_seen = 0
    second = M.compute_metrics(x, y, (r, rl), **kw)
    assert judge.rows_seen == 32  # only the samples went through the extractor
    assert second == first and os.listdir(tmp_path) == files and os.path.getmtime(tmp_path / files[0]) == mtime

    with torch.no_grad():  # other judge weights -> other cache entry
        judge.head.bias += 1
    M.compute_metrics(x, y, (r, rl), **kw)
    assert len(os.listdir(tmp_path)) == 2


def test_classwise_fid_short_classes():
    x, _, r, rl = data(12, 40)
    cw = M.MetricSettings(names=("classwise_fid",))
    y = torch.tensor([0] * 5 + [1] * 6 + [2])  # class 2: one sample
    with pytest.warns(UserWarning, match=r"classes \[2\]"):
        out = M.compute_metrics(x, y, (r, rl), judge=StandInJudge(), settings=cw)
    assert math.isfinite(out["classwise_fid"])
    with pytest.warns(UserWarning):  # fewer samples than classes: no class qualifies -> NaN
        out = M.compute_metrics(x[:3], torch.arange(3), (r, rl), judge=StandInJudge(), settings=cw)
    assert math.isnan(out["classwise_fid"])
    with pytest.raises(ValueError, match="labels"):
        M.compute_metrics(x, y, r, judge=StandInJudge(), settings=cw)


# --- offline Inception and name errors ---

@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def no_download(*a, **k):
        raise AssertionError("attempted a download")

    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", no_download)
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_inception_without_weights_names_path(hub_dir, tmp_path):
    expected = os.path.join(str(hub_dir), "checkpoints", M.INCEPTION_WEIGHTS_FILE)
    with pytest.raises(FileNotFoundError) as e:
        M.build_extractor("inception")
    assert expected in str(e.value) and M.INCEPTION_CONFIG_KEY in str(e.value)
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        M.compute_metrics(*data(8, 8)[:3], judge=StandInJudge(), settings=M.MetricSettings(
            extractor="inception", inception_weights=missing, names=("fid",)))


def test_inception_found_in_hub_cache(hub_dir, monkeypatch):
    path = hub_dir / "checkpoints" / M.INCEPTION_WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.arange(3.0)}, path)
    seen = {}
    monkeypatch.setattr(extractors, "FeatureExtractorInceptionV3", lambda name, feats, **kw: seen.update(kw))
    M.build_extractor("inception")
    # the file's tensors, loaded safely and handed over in memory (never the path: torch-fidelity unpickles it unsafely)
    got = torch.load(seen["feature_extractor_weights_path"], weights_only=True)
    assert list(got) == ["fc.weight"] and torch.equal(got["fc.weight"], torch.arange(3.0))


def test_unknown_names():
    x, y, r, _ = data(8, 8)
    with pytest.raises(ValueError, match="known: fid, fid_inf, kid, is, prc, accuracy"):
        M.compute_metrics(x, y, r, judge=StandInJudge(), settings=M.MetricSettings(names=("fid", "sharpness")))
    with pytest.raises(ValueError, match="known: judge, inception"):
        M.build_extractor("vgg", judge=StandInJudge())
    with pytest.raises(ValueError, match="known: judge, inception"):
        M.compute_metrics(x, y, r, judge=StandInJudge(), settings=M.MetricSettings(extractor="clip", names=("fid",)))



# --- MetricSettings: checked once, at construction (no judge, data or network involved) ---

@pytest.mark.parametrize("kw, message", [
    (dict(names=("fid", "fidd")), "unknown metric(s) ['fidd'] in metrics.names; known: fid, fid_inf, kid, is, prc, "
                                  "accuracy, "
                                  "guide_confidence, classwise_fid, nonfinite"),
    (dict(extractor="clip"), "unknown feature extractor 'clip' (metrics.extractor); known: judge, inception"),
    (dict(extractor="clip", names=("accuracy",)),  # refused even when no feature metric would use it
     "unknown feature extractor 'clip' (metrics.extractor); known: judge, inception"),
    (dict(batch_size=0), "metrics.batch_size must be >= 1, got 0; set metrics.batch_size to a positive integer"),
    (dict(kid_subset_size=0),
     "metrics.kid_subset_size must be >= 1, got 0; set metrics.kid_subset_size to a positive integer"),
    (dict(isc_splits=-1), "metrics.isc_splits must be >= 1, got -1; set metrics.isc_splits to a positive integer"),
    (dict(prc_neighborhood=0),
     "metrics.prc_neighborhood must be >= 1, got 0; set metrics.prc_neighborhood to a positive integer"),
    (dict(names="fid"), "metrics.names must be a list of metric names, got 'fid'; e.g. [fid]"),
])
def test_settings_refused_at_construction(kw, message):
    with pytest.raises(ValueError) as e:
        M.MetricSettings(**kw)
    assert str(e.value) == message


def test_settings_inception_weights_checked_at_construction(hub_dir, tmp_path):
    def expected(path):
        return (f"Inception-v3 weights not found at {path}: put {M.INCEPTION_WEIGHTS_FILE} there or set "
                "metrics.inception_weights=<path> (no download is attempted offline), or use the 'judge' extractor")

    missing = str(tmp_path / "nope.pth")
    hub_file = os.path.join(str(hub_dir), "checkpoints", M.INCEPTION_WEIGHTS_FILE)
    for weights, path in [(missing, missing), (None, hub_file)]:
        with pytest.raises(FileNotFoundError) as e:
            M.MetricSettings(extractor="inception", inception_weights=weights, names=("accuracy", "kid"))
        assert str(e.value) == expected(path)
    # no feature metric requested: the weights are never needed, so their absence is fine
    assert not M.MetricSettings(extractor="inception", inception_weights=missing,
                                names=("accuracy", "guide_confidence", "nonfinite")).feature_metrics_wanted
    torch.save({"fc.weight": torch.zeros(1)}, missing)
    assert M.MetricSettings(extractor="inception", inception_weights=missing, names=("fid",)).feature_metrics_wanted


def test_settings_defaults_frozen_and_replace_revalidates():
    s = M.MetricSettings()
    assert (s.names, s.extractor, s.inception_weights, s.real_stats_cache) == (M.METRIC_NAMES, "judge", None, None)
    assert (s.batch_size, s.kid_subsets, s.kid_subset_size, s.prc_neighborhood, s.prc_match_sizes, s.isc_splits,
            s.seed) == (256, 100, 1000, 3, True, 10, 2020)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1
    assert M.MetricSettings(names=["fid", "kid"]).names == ("fid", "kid")  # lists become tuples
    with pytest.raises(ValueError, match="metrics.batch_size"):
        dataclasses.replace(s, batch_size=0)


def test_settings_from_config_round_trips():
    node = {"names": ["fid", "accuracy"], "extractor": "judge", "inception_weights": None, "n_real": 500,
            "batch_size": 64, "kid_subset_size": 50, "seed": 7, "real_stats_cache": "/tmp/rs"}
    s = M.MetricSettings.from_config(node)
    assert s == M.MetricSettings(names=("fid", "accuracy"), extractor="judge", inception_weights=None, batch_size=64,
                                 kid_subset_size=50, seed=7, real_stats_cache="/tmp/rs")
    assert M.MetricSettings.from_config(dataclasses.asdict(s)) == s
    # names= overrides node.names (how a caller adds 'nonfinite'); missing keys keep the defaults
    assert M.MetricSettings.from_config(node, names=[*node["names"], "nonfinite"]).names == ("fid", "accuracy",
                                                                                             "nonfinite")
    assert M.MetricSettings.from_config({}) == M.MetricSettings()
    assert M.MetricSettings.from_config({"seed": 3}) == M.MetricSettings(seed=3)
    # an omegaconf node as the sweep passes it: interpolations resolved, ListConfig names -> tuple
    cfg = OmegaConf.create({"out_dir": "/o", "metrics": {**node, "real_stats_cache": "${out_dir}/real_stats"}})
    t = M.MetricSettings.from_config(cfg.metrics)
    assert t == dataclasses.replace(s, real_stats_cache="/o/real_stats") and type(t.names) is tuple
    # the same validation applies, and a misspelt key is refused instead of silently ignored
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['fidd'\] in metrics.names"):
        M.MetricSettings.from_config(node, names=["fidd"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['batchsize'\] in metrics"):
        M.MetricSettings.from_config({"batchsize": 64})

def test_corrupted_real_stats_cache_is_recomputed(tmp_path):
    from cguide.metrics.real_stats import cache_path, load_or_compute

    calls = []

    def extract():
        calls.append(1)
        return torch.randn(8, 3, generator=torch.Generator().manual_seed(0))

    kw = dict(n=8, cache_dir=str(tmp_path), dataset_id="d", extractor_id="e", layer="f")
    first = load_or_compute(extract, None, **kw)
    path = cache_path(str(tmp_path), "d", "e", "f", 8)
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.warns(UserWarning, match="unreadable"):
        again = load_or_compute(extract, None, **kw)
    assert len(calls) == 2 and torch.equal(again.features, first.features)
    assert load_or_compute(extract, None, **kw) is not None and len(calls) == 2  # rewritten whole
