"""Weights files are data, never code: a crafted pickle given as Inception-v3 weights (a configured path, or the
torch hub cache under $TORCH_HOME) is refused with one line and runs nothing. torch-fidelity's own loader
unpickles with weights_only=False; the first test shows that the payload used here does run there."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from cguide.metrics import extractors
from cguide.metrics import MetricSettings, build_extractor


class Payload:
    """Unpickling this calls exec: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def write_payload(path, marker, zipped=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": torch.zeros(2), "x": Payload(marker)}, path, _use_new_zipfile_serialization=zipped)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() reads $TORCH_HOME again
    return tmp_path / "torch_home" / "hub" / "checkpoints" / extractors.INCEPTION_WEIGHTS_FILE


def test_the_payload_runs_code_in_torch_fidelitys_own_loader(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(Exception):  # noqa: B017 - it fails after the payload has run
        FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path=str(
            write_payload(tmp_path / "w.pth", marker)))
    assert marker.exists()


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("where", ["configured", "torch_home"])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, torch_home, where, zipped):
    marker = tmp_path / "ran"
    path = write_payload(tmp_path / "w.pth" if where == "configured" else torch_home, marker, zipped)
    configured = str(path) if where == "configured" else None
    for attempt in (lambda: MetricSettings(extractor="inception", inception_weights=configured, names=("fid",)),
                    lambda: build_extractor("inception", inception_weights=configured)):
        with pytest.raises(ValueError, match="hold Python objects other than tensors, and unpickling them could "
                                             "run code: refused"):
            attempt()
    assert not marker.exists()


def test_the_sweep_command_refuses_the_pickle_before_any_work(tmp_path, torch_home, monkeypatch, capsys):
    from cguide import sweep

    marker = tmp_path / "ran"
    write_payload(torch_home, marker)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cguide.sweep", "eps_ckpt=e.ckpt", "classifier_ckpt=c.ckpt", "judge_ckpt=j.ckpt",
                                      "metrics.extractor=inception", "logger=none", "out_dir=out"])
    with pytest.raises(SystemExit) as e:
        sweep.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: Inception-v3 weights {torch_home} hold")
    assert not marker.exists() and not (tmp_path / "out" / "sweep.json").exists()  # nothing claimed or drawn


def test_a_training_checkpoint_is_not_inception_weights(tmp_path):
    path = tmp_path / "judge.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"are a dict with keys epoch, state_dict, not a state dict of tensors "
                                         r"\(a training checkpoint, e.g. the judge's, is not Inception weights\)"):
        MetricSettings(extractor="inception", inception_weights=str(path), names=("fid",))
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="are not a readable torch weights file"):
        MetricSettings(extractor="inception", inception_weights=str(path), names=("fid",))


def test_plain_weights_of_the_right_shapes_build_the_extractor(tmp_path, monkeypatch):
    # a state dict of torch-fidelity's own layers (random values: the published file cannot be fetched here)
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        empty = tmp_path / "empty.pth"
        torch.save({}, empty)
        state = FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path=str(empty)).state_dict()
    path = tmp_path / extractors.INCEPTION_WEIGHTS_FILE
    torch.save(state, path)
    ext = build_extractor("inception", inception_weights=str(path))
    assert torch.equal(ext.fc.weight, state["fc.weight"])
    feats = ext(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert feats[0].shape == (2, 2048) and torch.isfinite(feats[1]).all()
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, path)  # a file of other layers
    with pytest.raises(ValueError, match=f"{path} is not Inception-v3 weights for torch-fidelity"):
        build_extractor("inception", inception_weights=str(path))
    assert os.path.isfile(path)
