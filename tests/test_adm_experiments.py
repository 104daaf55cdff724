"""The sweep experiments on guided-diffusion's released weights (conf/experiment/adm*.yaml): each composes for
`cguide.sweep`, stops at the first missing file with the not-found line, and runs end to end on tiny
random-weight stand-ins written under the released names (the preset overridden by the stand-in's flags),
measured on Inception features (a stand-in extractor: no weights here) against a reference batch."""

from __future__ import annotations

import io
import json
import re
import sys

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from cguide.io.npz_batches import read_reference_batch
from cguide.metrics import extractors, feature_stats, frechet_distance
from helpers.adm import CLASSIFIER_FLAGS, COND_FLAGS, UNCOND_FLAGS, write_classifier, write_reference, write_unet
from helpers.config import compose_cfg

# experiment -> (eps-model role, its released file, stand-in flags, classifier file, reference batch, sampler, steps)
EXPERIMENTS = {
    "adm256_uncond_table4": ("eps", "256x256_diffusion_uncond.pt", UNCOND_FLAGS, "256x256_classifier.pt",
                             "VIRTUAL_imagenet256_labeled.npz", "ddpm", 250),
    "adm256_cond_table4": ("cond", "256x256_diffusion.pt", COND_FLAGS, "256x256_classifier.pt",
                           "VIRTUAL_imagenet256_labeled.npz", "ddpm", 250),
    "adm128_ddim25": ("cond", "128x128_diffusion.pt", COND_FLAGS, "128x128_classifier.pt",
                      "VIRTUAL_imagenet128_labeled.npz", "ddim", 25),
}

PRESET = {"adm256_uncond_table4": "adm256_uncond", "adm256_cond_table4": "adm256_cond", "adm128_ddim25": "adm128_cond"}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_composes_for_the_sweep(name, tmp_path):
    role, model, _, clf, ref, sampler, steps = EXPERIMENTS[name]
    cfg = compose_cfg("sweep", [f"experiment={name}", "paths.adm_dir=/w"], tmp_path)
    assert cfg[f"{role}_ckpt"] == f"/w/{model}" and cfg.classifier_ckpt == f"/w/{clf}"
    assert cfg[f"{role}_preset"] == PRESET[name]
    assert cfg.classifier_preset == f"adm{clf[:3]}_classifier" and cfg.judge_ckpt is None
    assert (cfg.sweep.samplers, cfg.sweep.steps, cfg.sampler.name) == ([sampler], [steps], sampler)
    assert cfg.sampler.var_type == ("learned" if sampler == "ddpm" else "fixed_small")  # DDIM ignores v
    assert cfg.sweep.n_per_point == 50000 and cfg.metrics.extractor == "inception"
    assert cfg.metrics.reference_npz == f"/w/{ref}" and "accuracy" not in cfg.metrics.names
    want = {"adm256_uncond_table4": ([0, 1, 10], ["mean_shift", "score"], ["classifier"], "uniform"),
            "adm256_cond_table4": ([0, 1, 10], ["mean_shift"], ["cond_classifier"], "uniform"),
            "adm128_ddim25": ([0, 1], ["score"], ["cond_classifier"], "leading")}[name]
    assert (list(cfg.sweep.scales), list(cfg.sweep.variants), list(cfg.sweep.methods), cfg.sampler.spacing) == want


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_missing_weights_stop_with_the_not_found_line(name, tmp_path):
    from cguide.sweep import run

    weights = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(1)}, weights)  # past the Inception check, to the checkpoints
    out = tmp_path / "out"
    cfg = compose_cfg("sweep", [f"experiment={name}", f"paths.adm_dir={tmp_path}/models", f"out_dir={out}",
                                f"metrics.inception_weights={weights}", "logger=none"], out)
    with pytest.raises(FileNotFoundError) as e:
        run(cfg)
    model = EXPERIMENTS[name][1]
    assert str(e.value) == (f"ADM checkpoint not found: {tmp_path}/models/{model}; download it from guided-diffusion's "
                            "README (https://github.com/openai/guided-diffusion#download-pre-trained-models)")
    assert not out.exists()


def test_missing_weights_through_the_command_line(tmp_path, monkeypatch, capsys):
    from cguide import sweep

    weights = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(1)}, weights)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cguide.sweep", "experiment=adm256_uncond_table4", "paths.adm_dir=models",
                                      f"metrics.inception_weights={weights}", "logger=none"])
    with pytest.raises(SystemExit) as e:
        sweep.main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and lines == ["error: ADM checkpoint not found: models/256x256_diffusion_uncond.pt; "
                                           "download it from guided-diffusion's README (https://github.com/openai/"
                                           "guided-diffusion#download-pre-trained-models)"]


class StubInception(FeatureExtractorBase):
    """Stands in for torch-fidelity's Inception-v3 (same layer names; 16-d features from a fixed projection
    of the pooled uint8 image). Records the weights path it was built with and every batch it saw."""

    paths: list = []
    seen: list = []

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        StubInception.paths.append(io.BytesIO(feature_extractor_weights_path.getvalue()))
        g = torch.Generator().manual_seed(0)
        self.proj, self.head = torch.randn(48, 16, generator=g), torch.randn(16, 10, generator=g)

    @staticmethod
    def get_provided_features_list():
        return "2048", "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "2048", "kid": "2048", "prc": "2048"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        f = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1) @ self.proj
        StubInception.seen.append((x.clone(), f))
        out = {"2048": f, "logits_unbiased": f @ self.head}
        return tuple(out[n] for n in self.features_list)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_runs_end_to_end_on_stand_ins(name, tmp_path, monkeypatch):
    from cguide.grid.runner import run_sweep

    role, model, flags, clf, ref_name, sampler, _ = EXPERIMENTS[name]
    models = tmp_path / "models"
    write_unet(models / model, flags)
    write_classifier(models / clf)
    ref = write_reference(models / ref_name, n=30, size=16, stats_dim=16)
    weights = tmp_path / "pt_inception.pth"
    torch.save({"fc.weight": torch.arange(4.0)}, weights)
    monkeypatch.setattr(extractors, "FeatureExtractorInceptionV3", StubInception)
    StubInception.paths.clear()
    StubInception.seen.clear()
    out = tmp_path / "out"
    cfg = compose_cfg("sweep", [
        f"experiment={name}", f"paths.adm_dir={models}", f"{role}_preset='{flags}'",
        f"classifier_preset='{CLASSIFIER_FLAGS}'", f"metrics.inception_weights={weights}", "sweep.scales=[0,1]",
        "sweep.steps=[3]", "sweep.n_per_point=10", "sweep.save_npz=true", "device=cpu", "progress=false",
        "logger=none", f"out_dir={out}"], out)
    run_sweep(cfg)

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(cfg.sweep.variants) and {r["sampler"] for r in rows} == {sampler}
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("fid_inception", "is_inception", "precision_inception",
                                               "recall_inception", "guide_confidence", "fid_inception_lo"))
        assert "accuracy" not in r and r["nonfinite"] == 0.0
        with np.load(out / "samples" / f"{r['point']}.npz") as z:  # the paper's evaluator reads these
            assert z["arr_0"].shape == (10, 16, 16, 3) and z["arr_0"].dtype == np.uint8
            assert z["arr_1"].tolist() == list(range(10))
    # extractor=inception from the given weights file (its tensors, loaded safely and handed over in memory)
    assert StubInception.paths and all(torch.equal(torch.load(p, weights_only=True)["fc.weight"], torch.arange(4.0))
                                       for p in StubInception.paths)
    # the reference batch's images are the real side (precision / recall), exactly as stored
    real_calls = [x for x, _ in StubInception.seen if len(x) == 30]
    assert len(real_calls) == 1 and torch.equal(real_calls[0], read_reference_batch(ref).images)
    # FID against the batch's whole-dataset mu / sigma, as guided-diffusion's evaluator computes it
    first_gen = next(f for x, f in StubInception.seen if len(x) == 10)
    with np.load(ref) as z:
        stats = {"mu": z["mu"], "sigma": z["sigma"]}
    assert rows[0]["fid_inception"] == pytest.approx(frechet_distance(feature_stats(first_gen), stats), rel=1e-6)
    assert list((out / "real_stats").glob("real-stats__reference-*")), "the reference features were not cached"
    defines = json.loads((out / "sweep.json").read_text())["defines"]
    assert "data" not in defines and defines["reference"]["fid_stats"] and defines[f"{role}_preset"] == flags
    assert re.fullmatch(r"[0-9a-f]{12}", defines["reference"]["fid_stats"])
