"""Training entry point: the real Hydra config composes, trains, checkpoints, resumes, and refuses bad keys."""

import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException

from cguide.io.checkpoints import load_net, read_checkpoint
from helpers.config import TINY, compose_cfg


@pytest.mark.parametrize("task", ["diffusion", "classifier", "judge", "guide"])
def test_fast_dev_run_each_task(task, cfg_train, tmp_path):
    from cguide.train import train

    result = train(cfg_train(f"task={task}", "trainer.fast_dev_run=true"))
    # one training batch ran with a finite loss, and a smoke test writes no checkpoint
    assert result.steps == 1 and result.checkpoint is None
    assert torch.isfinite(torch.tensor(result.metrics["train/loss_step"]))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_checkpoints_load_weights_only_with_metadata(tiny_ckpts):
    for kind, path in tiny_ckpts.items():
        ckpt = torch.load(path, weights_only=True)  # plain containers only
        assert ckpt["cguide"]["kind"] == kind
        loaded = load_net(path, kind)
        assert loaded.image_shape == (1, 8, 8) and loaded.num_classes == 10
    eps, clf = (load_net(tiny_ckpts[k], k) for k in ("eps_model", "noisy_classifier"))
    assert eps.fingerprint == clf.fingerprint and eps.fingerprint["T"] == 100
    assert isinstance(load_net(tiny_ckpts["judge"], "judge").extra["test_acc"], float)


class _EMAAtStart(L.Callback):
    """Records the EMA weights as fit starts, i.e. right after a checkpoint was restored."""

    def on_train_start(self, trainer, module):
        self.ema = {k: v.clone() for k, v in module.ema.state_dict().items()}
        self.net = {k: v.clone() for k, v in module.net.state_dict().items()}


def test_resume_restores_the_ema_and_continues_the_step_count(cfg_train, tmp_path, monkeypatch):
    import cguide.train as entry

    entry.train(cfg_train("task=diffusion", "model.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2"))
    saved = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 4
    probe = _EMAAtStart()
    build = entry.build_callbacks
    monkeypatch.setattr(entry, "build_callbacks", lambda *a: [*build(*a), probe])
    entry.train(cfg_train("task=diffusion", "model.max_steps=8", "resume=true"))
    assert read_checkpoint(tmp_path / "checkpoints" / "diffusion.ckpt")["global_step"] == 8
    # the average resumed from what was saved at step 4, not from the raw weights
    prefix = "ema."
    ema_saved = {k[len(prefix):]: v for k, v in saved["state_dict"].items() if k.startswith(prefix)}
    assert ema_saved.keys() == probe.ema.keys()
    assert all(torch.equal(probe.ema[k], v) for k, v in ema_saved.items())
    weights = [k for k in probe.net if k.endswith("weight")]
    ema_weights = {k.split("module.", 1)[-1]: v for k, v in probe.ema.items()}
    assert any(not torch.equal(probe.net[k], ema_weights[k]) for k in weights)


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


def test_a_finished_run_is_never_silently_replaced(cfg_train, tmp_path, capsys):
    from cguide.train import train

    first = train(cfg_train("task=diffusion", "model.max_steps=3")).checkpoint
    before = first.read_bytes()
    with pytest.raises(ValueError, match="already holds a run .*resume=true.*overwrite=true"):
        train(cfg_train("task=diffusion", "model.max_steps=2"))
    assert first.read_bytes() == before
    again = train(cfg_train("task=diffusion", "model.max_steps=2", "overwrite=true")).checkpoint
    assert read_checkpoint(again)["global_step"] == 2
    kept = list(tmp_path.glob("checkpoints.replaced-*/diffusion.ckpt"))
    assert len(kept) == 1 and kept[0].read_bytes() == before  # moved aside, byte for byte


def test_resume_with_another_net_size_lists_the_differences(cfg_train):
    from cguide.train import train

    train(cfg_train("task=classifier", "classifier.max_steps=2"))
    with pytest.raises(ValueError, match=r"cannot resume from .*last.ckpt: it was trained with other settings "
                                         r"\(net_config.channel_mult: .*model_channels: 16 -> 32"):
        train(cfg_train("task=classifier", "classifier=small", "classifier.max_steps=4", "resume=true"))
