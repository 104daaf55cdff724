"""A second judge (#26 item 6): another architecture and seed, trained like the judge; every sweep point gets
its accuracy (accuracy_judge2) and the two judges' agreement (judge_agreement), each with a Wilson interval.

Each test fails with its rule broken: the hand computation with a wrong denominator (non-finite rows counted) or
agreement measured against the target; the key pins with any change to an existing stage's key (which would
retrain every checkpoint in outputs/); the sweep tests with the columns missing, or present without a checkpoint."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from helpers.config import compose_cfg

# stage_key(cfg, stage) of the default pipeline (experiment=mnist5k_quick) before the second judge existed
# (commit 4555ec4): these keys are the stage.json markers of outputs/pipeline/mnist5k_quick, so they must not move
JUDGE_KEY = {"data": {"batch_size": 128, "channels": None, "download": False, "image_size": 16, "name": "mnist5k",
                      "num_workers": 0, "resize": "resize", "root": "data", "split_seed": 0, "test_fraction": 0.1,
                      "val_fraction": 0.1, "verify_md5": True},
             "net": {"batch_size": None, "ema_decay": 0.999, "lr": 0.001, "max_steps": 400, "overrides": {},
                     "size": "small", "warmup_steps": 50, "weight_decay": 0.0005},
             "precision": "bf16-mixed", "seed": 0, "task": "judge"}
KEY_SHA256 = {"diffusion": "9d2c5a1e97d06bd327da9a8bc0c9375dc68f7d7c01b6b803a13d6ff13ef14f1f",
              "classifier": "1cbef1d32ce6e0a48ba4a4803045f63db3c916713f17ffb34717c8a4baf7a3aa",
              "judge": "9ec627e76a38d593257442c04daf69106b731c8c1bfc44a1869d50cf41334e34",
              "guide": "6b3f3a36f6053afe3a8f92e687b603a53c0c4de0ff8a0322b61c283e162a2fb7",
              "cond_diffusion": "7b19d93d7c0e4a2f2423d3d47c20bad6386aa563ad3f71a87199695486b85c15"}


def test_existing_stage_keys_are_pinned(tmp_path):
    from cguide.pipeline.stages import stage_key, stages

    cfg = compose_cfg("pipeline", [], tmp_path)
    assert stage_key(cfg, "judge") == JUDGE_KEY
    for stage, digest in KEY_SHA256.items():
        assert hashlib.sha256(json.dumps(stage_key(cfg, stage), sort_keys=True).encode()).hexdigest() == digest, stage
    # the second judge: its own task and seed offset, the judge's training settings (interpolated from judge/)
    key = stage_key(cfg, "judge2")
    assert key["task"] == "judge2" and key["net"] == {**JUDGE_KEY["net"], "seed_offset": 2}
    assert key["precision"] == JUDGE_KEY["precision"]
    assert stages(cfg) == ["diffusion", "classifier", "judge", "judge2"]
    off = compose_cfg("pipeline", ["metrics.second_judge=false"], tmp_path)
    assert stages(off) == ["diffusion", "classifier", "judge"]
    assert stage_key(compose_cfg("pipeline", ["judge.max_steps=7"], tmp_path), "judge2")["net"]["max_steps"] == 7


class _Fixed(nn.Module):
    """A fake judge: predicts the class written in pixel (0, 0, col) of each sample (value / 10)."""

    def __init__(self, col: int, classes: int = 4):
        super().__init__()
        self.col, self.classes, self.w = col, classes, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        c = (x[:, 0, 0, self.col] * 10).round().long()
        return nn.functional.one_hot(c, self.classes).float() + 0 * self.w


def _samples():
    """8 samples of 4 classes: (judge's class, judge2's class) per sample; sample 7 is NaN (left out)."""
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    first = [0, 1, 2, 0, 0, 3, 2, 3]  # right on 0, 1, 2, 4, 6 (7 is non-finite)
    second = [0, 1, 1, 0, 2, 3, 2, 3]  # right on 0, 1, 6; agrees with the judge on 0, 1, 3, 5, 6
    x = torch.zeros(8, 1, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(first) / 10
    x[:, 0, 0, 1] = torch.tensor(second) / 10
    x[7, 0, 3, 3] = float("nan")
    return x, targets


def test_accuracy_and_agreement_by_hand():
    from cguide.metrics import MetricSettings, compute_metrics
    from cguide.metrics.bootstrap import wilson_interval
    from cguide.metrics.intervals import row_metrics

    x, y = _samples()
    settings = MetricSettings(names=("accuracy", "nonfinite"), interval_resamples=20)
    keep: dict = {}
    values = compute_metrics(x, y, x, judge=_Fixed(0), judge2=_Fixed(1), settings=settings, keep=keep)
    assert values["accuracy"] == pytest.approx(5 / 7)
    assert values["accuracy_judge2"] == pytest.approx(3 / 7)  # of the 7 finite samples
    assert values["judge_agreement"] == pytest.approx(5 / 7)  # same class, whatever the target
    per = keep["samples"]
    assert per.correct_judge2.tolist() == [True, True, False, False, False, False, True, False]
    assert per.agree.tolist() == [True, True, False, True, False, True, True, False]
    row, reps = row_metrics(values, keep, settings)
    for name, k in (("accuracy_judge2", 3), ("judge_agreement", 5)):
        assert row[name] == pytest.approx(k / 7)
        assert (row[f"{name}_lo"], row[f"{name}_hi"]) == pytest.approx(wilson_interval(k, 7, 0.95))
        assert reps[name].shape == (20,) and torch.all((reps[name] >= 0) & (reps[name] <= 1))
    # without the second judge, or switched off, the columns are absent; asked for without one: an error
    assert not {"accuracy_judge2", "judge_agreement"} & set(compute_metrics(x, y, x, judge=_Fixed(0),
                                                                            settings=settings))
    off = MetricSettings(names=("accuracy",), second_judge=False)
    assert "accuracy_judge2" not in compute_metrics(x, y, x, judge=_Fixed(0), judge2=_Fixed(1), settings=off)
    with pytest.raises(ValueError, match="metrics.second_judge=true needs a second judge: set judge2_ckpt="):
        compute_metrics(x, y, x, judge=_Fixed(0), settings=MetricSettings(names=("accuracy",), second_judge=True))
    # no first judge in the call: the second judge's accuracy alone
    alone = compute_metrics(x, y, x, judge=None, judge2=_Fixed(1), settings=MetricSettings(names=("nonfinite",)))
    assert alone["accuracy_judge2"] == pytest.approx(3 / 7) and "judge_agreement" not in alone


def _rows(out):
    from cguide.grid.results import ResultsFolder

    return ResultsFolder(out).rows()


def test_sweep_with_and_without_a_second_judge(cfg_sweep, tiny_judge2_ckpt, tiny_ckpts, tmp_path):
    from cguide.grid.evidence_store import read_evidence
    from cguide.grid.runner import run_sweep

    out = run_sweep(cfg_sweep("sweep.scales=[0,2]", f"judge2_ckpt={tiny_judge2_ckpt}"))
    rows = _rows(out)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    for name in ("accuracy_judge2", "judge_agreement"):
        assert {name, f"{name}_lo", f"{name}_hi"} <= set(header)
        assert all(0 <= r[f"{name}_lo"] <= r[name] <= r[f"{name}_hi"] <= 1 for r in rows)
        ev = read_evidence(out, rows[0]["point"])
        assert name in ev["replicates"]
    ev = read_evidence(out, rows[0]["point"])
    finite = ev["per_sample"]["finite"]
    assert ev["per_sample"]["correct_judge2"][finite].double().mean().item() == pytest.approx(
        rows[0]["accuracy_judge2"])
    report = (out / "evidence.md").read_text()
    assert "## Both judges, per point" in report and "| score | 2 |" in report
    assert (out / "matched_judge2.csv").is_file()
    assert json.loads((out / "sweep.json").read_text())["defines"]["judge2_ckpt"]["size"] > 0

    plain = run_sweep(cfg_sweep("sweep.scales=[0,2]", f"out_dir={tmp_path / 'plain'}"))
    assert not any(k.startswith(("accuracy_judge2", "judge_agreement")) for r in _rows(plain) for k in r)
    assert "judge2_ckpt" not in json.loads((plain / "sweep.json").read_text())["defines"]
    assert "Both judges" not in (plain / "evidence.md").read_text()


def test_second_judge_errors_are_one_line(cfg_sweep, tiny_judge2_ckpt, tiny_ckpts, tmp_path):
    from cguide.sweep import run

    with pytest.raises(ValueError, match=r"^metrics.second_judge=true needs a second judge: set judge2_ckpt=<path>"):
        run(cfg_sweep("metrics.second_judge=true"))
    with pytest.raises(ValueError, match=r"holds a judge classifier \(task=judge\), but a second judge classifier "
                                         r"\(task=judge2\) is expected here"):
        run(cfg_sweep(f"judge2_ckpt={tiny_ckpts['judge']}"))
    ckpt = torch.load(tiny_judge2_ckpt, weights_only=True)
    ckpt["cguide"]["image_shape"] = [1, 16, 16]
    ckpt["cguide"]["net_config"]["image_size"] = 16
    torch.save(ckpt, tmp_path / "j2_16.ckpt")
    with pytest.raises(ValueError, match=r"second judge .*j2_16.ckpt \(judge2_ckpt\) gives 10 classes of images "
                                         r"\[1, 16, 16\], the eps-model .* makes 10 classes of \[1, 8, 8\]"):
        run(cfg_sweep(f"judge2_ckpt={tmp_path / 'j2_16.ckpt'}"))
    assert not (tmp_path / "sweep" / "sweep.json").exists()  # refused before the folder was claimed
