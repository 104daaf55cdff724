"""Training entry point: the real Hydra config composes, trains, checkpoints, resumes, and refuses bad keys."""

import pytest
import torch
from hydra.errors import ConfigCompositionException

from cguide.checkpoints import load_net, read_checkpoint
from conftest import TINY, compose_cfg


@pytest.mark.parametrize("task", ["diffusion", "classifier", "judge"])
def test_fast_dev_run_each_task(task, tmp_path):
    from cguide.train import train

    cfg = compose_cfg("train", [f"task={task}", *TINY, "trainer.fast_dev_run=true"], tmp_path)
    train(cfg)


def test_checkpoints_load_weights_only_with_metadata(tiny_ckpts):
    for kind, path in tiny_ckpts.items():
        ckpt = torch.load(path, weights_only=True)  # plain containers only
        assert ckpt["cguide"]["kind"] == kind
        loaded = load_net(path, kind)
        assert loaded.image_shape == (1, 8, 8) and loaded.num_classes == 10
    eps, clf = (load_net(tiny_ckpts[k], k) for k in ("eps_model", "noisy_classifier"))
    assert eps.fingerprint == clf.fingerprint and eps.fingerprint["T"] == 100
    assert isinstance(load_net(tiny_ckpts["judge"], "judge").extra["test_acc"], float)


def test_resume_continues_step_count(tmp_path):
    from cguide.train import train

    first = compose_cfg("train", ["task=diffusion", *TINY, "model.max_steps=4", "callbacks.ckpt_every_n_steps=2"], tmp_path)
    train(first)
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4
    again = compose_cfg("train", ["task=diffusion", *TINY, "model.max_steps=8", "resume=true"], tmp_path)
    train(again)
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "diffusion.ckpt")
    assert ckpt["global_step"] == 8
    # the EMA kept averaging from the resumed state rather than restarting from the raw weights
    assert any(k.startswith("ema.") for k in ckpt["state_dict"])


@pytest.mark.parametrize("override,key", [("data.colour=1", "colour"), ("model.sizee=small", "sizee"),
                                          ("trainer.max_step=3", "max_step")])
def test_unknown_config_key_is_refused_naming_it(override, key, tmp_path):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg("train", [override], tmp_path)
    assert key in str(e.value.__cause__ or e.value)


def test_wrong_type_is_refused(tmp_path):
    with pytest.raises(ConfigCompositionException):
        compose_cfg("train", ["diffusion.T=many"], tmp_path)


def test_unknown_dataset_and_task(tmp_path):
    from cguide.train import train

    with pytest.raises(ValueError, match="unknown dataset 'mnist6k'; known: mnist5k"):
        train(compose_cfg("train", [*TINY, "data.name=mnist6k"], tmp_path))
    with pytest.raises(ValueError, match="unknown task 'difusion'; known: diffusion, classifier, judge"):
        train(compose_cfg("train", [*TINY, "task=difusion"], tmp_path))


def test_image_size_not_divisible_by_downsampling(tmp_path):
    from cguide.train import train

    with pytest.raises(ValueError, match="image_size=10 is not divisible by the downsampling factor 4"):
        train(compose_cfg("train", [*TINY, "data.image_size=10", "model=small"], tmp_path))
