"""<net>.precision: one network's training precision (e.g. the eps-model in bf16-mixed while the judge, the
metric, stays 32-true); unset, the net trains under trainer.precision as before."""

from __future__ import annotations

import pytest
import torch

from helpers.config import compose_cfg


def _weights(cfg_train, *overrides) -> dict:
    from cguide.train import train
    res = train(cfg_train("task=classifier", "classifier.max_steps=3", *overrides))
    return torch.load(res.checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def test_a_nets_own_precision_is_the_one_it_trains_under(cfg_train, tmp_path):
    own = _weights(cfg_train, "classifier.precision=bf16-mixed", f"paths.output_dir={tmp_path / 'own'}")
    trainer_wide = _weights(cfg_train, "trainer.precision=bf16-mixed", f"paths.output_dir={tmp_path / 'wide'}")
    fp32 = _weights(cfg_train, f"paths.output_dir={tmp_path / 'fp32'}")
    assert all(torch.equal(own[k], trainer_wide[k]) for k in own)  # same seeds: bit for bit the trainer-wide run
    assert any(not torch.equal(own[k], fp32[k]) for k in own if own[k].is_floating_point())


def test_it_defines_only_its_own_stage(tmp_path):
    from cguide.pipeline import stage_key
    base = compose_cfg("pipeline", [f"out_dir={tmp_path}", "model.precision=null"], tmp_path / "h")
    bf16 = compose_cfg("pipeline", [f"out_dir={tmp_path}", "model.precision=bf16-mixed"], tmp_path / "h")
    assert stage_key(bf16, "diffusion")["precision"] == "bf16-mixed"
    assert stage_key(base, "diffusion")["precision"] == "32-true"
    assert {k: v for k, v in stage_key(bf16, "diffusion").items() if k != "precision"} == \
        {k: v for k, v in stage_key(base, "diffusion").items() if k != "precision"}
    for stage in ("classifier", "judge"):
        assert stage_key(bf16, stage) == stage_key(base, stage)
    assert stage_key(base, "classifier")["precision"] == "bf16-mixed"  # the quick profile's own
    assert "precision" not in stage_key(base, "judge")["net"]  # unset: the keys of runs made before it existed


def test_an_unsupported_net_precision_names_its_key(cfg_train):
    from cguide.train import check_train
    with pytest.raises(ValueError, match=r"^judge.precision=64-true is not supported \(the nets keep float32 "
                                         r"parts\); use one of 32-true, 32, 16-mixed, 16, bf16-mixed, bf16$"):
        check_train(cfg_train("task=judge", "judge.precision=64-true"))
