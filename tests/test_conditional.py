"""The class-conditional eps-model with label dropout (model.cond=true): dropout rate, training and
checkpoints, the conditional/unconditional expectation of load_net, and unconditional training unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cguide.config import plain
from cguide.data import as_data_config, build_datamodule
from cguide.diffusion import q_sample
from cguide.io.checkpoints import load_net, read_checkpoint
from cguide.modules import DiffusionModule
from cguide.modules.diffusion import drop_labels
from cguide.modules.factory import build_module, check_resumable, check_training
from cguide.nets import UNet, unet_config
from cguide.train import train

SCHEDULE = {"kind": "linear", "T": 100}
SHAPE = [1, 8, 8]


def _module(cond: bool, p_uncond: float = 0.0, seed: int = 0, cls=DiffusionModule) -> DiffusionModule:
    torch.manual_seed(seed)
    labels = dict(num_classes=10, null_class=True) if cond else {}
    return cls(unet_config("tiny", 1, 8, **labels).to_dict(), SCHEDULE, SHAPE, 10, warmup_steps=2,
                           cond=cond, p_uncond=p_uncond)


def _loader(n: int = 64, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *SHAPE, generator=g) * 2 - 1
    return DataLoader(TensorDataset(x, torch.randint(0, 10, (n,), generator=g)), batch_size=batch_size)


def _fit(module, steps: int, loader=None) -> None:
    L.seed_everything(7, verbose=False)
    L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, loader or _loader())


def _save(module, path):
    torch.save({"cguide": module.cguide_meta(), "state_dict": module.state_dict()}, path)
    return path


def _binomial_ok(f: float, p: float, n: int) -> bool:
    return abs(f - p) <= 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.37])
def test_dropout_rate_is_p_uncond_and_keeps_the_other_labels(p):
    y = torch.randint(0, 10, (100_000,), generator=torch.Generator().manual_seed(1))
    out = drop_labels(y, p, 10, torch.Generator().manual_seed(2))
    null = out == 10
    assert _binomial_ok(null.float().mean().item(), p, len(y))
    assert torch.equal(out[~null], y[~null])


def test_null_fraction_over_training_batches():
    module, seen = _module(cond=True, p_uncond=0.3), []
    module.net.register_forward_pre_hook(lambda net, args: seen.append(args[2].clone()))
    _fit(module, 20, _loader(n=1280, batch_size=64))
    y = torch.cat(seen)
    assert len(y) == 1280
    assert _binomial_ok((y == module.net.null_label).float().mean().item(), 0.3, len(y))

    # validation: the EMA net sees the real labels (conditional loss)
    module, batch, seen = _module(cond=True, p_uncond=0.3), next(iter(_loader())), []
    module.ema.module.register_forward_pre_hook(lambda net, args: seen.append(args[2]))
    with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):  # no trainer attached here
        module.validation_step(batch, 0)
    assert torch.equal(seen[0], batch[1])


def test_conditional_training_and_checkpoint(cfg_train):
    cfg = cfg_train("task=diffusion", "model.cond=true", "model.p_uncond=0.2")
    ckpt = train(cfg).checkpoint
    assert read_checkpoint(ckpt)["cguide"]["extra"] == {"cond": True, "p_uncond": 0.2}
    eps = load_net(ckpt, "eps_model", conditional=True)
    assert eps.conditional and eps.p_uncond == 0.2 and eps.net.cfg.null_class
    C = eps.num_classes
    assert eps.net.null_label == C == eps.net.cfg.num_classes == 10
    x = torch.randn(C + 1, *SHAPE)
    with torch.no_grad():
        out = eps.net(x, torch.full((C + 1,), 50), torch.arange(C + 1))  # 0..C-1 and the null label C
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert list((Path(cfg.paths.output_dir) / "samples").glob("step_*.png"))  # SampleGrid drew with labels


def test_load_net_refuses_the_wrong_conditioning_in_one_line(tmp_path):
    cond = _save(_module(cond=True, p_uncond=0.1), tmp_path / "cond.ckpt")
    uncond = _save(_module(cond=False), tmp_path / "uncond.ckpt")
    with pytest.raises(ValueError) as e:
        load_net(cond, "eps_model", conditional=False)
    assert str(e.value) == (f"checkpoint {cond} holds a class-conditional eps-model (model.cond=true), but an "
                            "unconditional one is expected here (eps_ckpt); pass it as cond_ckpt=..., or train an "
                            "unconditional model")
    with pytest.raises(ValueError) as e:
        load_net(uncond, "eps_model", conditional=True)
    assert str(e.value) == (f"checkpoint {uncond} holds an unconditional eps-model, but a class-conditional one "
                            "(model.cond=true) is expected here (cond_ckpt); train one with "
                            "cguide.train task=diffusion model.cond=true")
    assert load_net(cond, "eps_model").conditional and not load_net(uncond, "eps_model", conditional=False).conditional


def test_old_checkpoint_loads_and_resumes_as_unconditional(tmp_path):
    module = _module(cond=False)
    ckpt = {"cguide": module.cguide_meta(), "state_dict": module.state_dict()}
    ckpt["cguide"]["extra"] = {}  # written before conditioning existed
    del ckpt["cguide"]["net_config"]["null_class"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    eps = load_net(tmp_path / "old.ckpt", "eps_model", conditional=False)
    assert not eps.conditional and eps.p_uncond == 0.0
    check_resumable(tmp_path / "old.ckpt", ckpt, module.cguide_meta())  # the new field is no difference
    with pytest.raises(ValueError, match=r"net_config.null_class: False -> True"):
        check_resumable(tmp_path / "old.ckpt", ckpt, _module(cond=True).cguide_meta())


def _built(cfg_train, *overrides):
    cfg = cfg_train("task=diffusion", *overrides)
    dm = build_datamodule(as_data_config(plain(cfg.data)))
    return build_module("diffusion", plain(cfg.model), plain(cfg.diffusion), dm)


def test_p_uncond_one_is_the_unconditional_model(cfg_train):
    module = _built(cfg_train, "model.cond=true", "model.p_uncond=1")
    assert module.net.label_emb is None and not module.hparams.cond
    assert module.cguide_meta()["extra"] == {"cond": False, "p_uncond": 0.0}
    module = _built(cfg_train, "model.cond=true", "model.p_uncond=0.5")
    assert module.net.label_emb.num_embeddings == 11 and module.hparams.p_uncond == 0.5
    assert _built(cfg_train).net.label_emb is None  # model.cond defaults to false


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "inf"])
def test_p_uncond_outside_unit_interval_is_refused(cfg_train, value):
    cfg = cfg_train("task=diffusion", "model.cond=true", f"model.p_uncond={value}")
    with pytest.raises(ValueError) as e:
        check_training("diffusion", plain(cfg.model), plain(cfg.trainer))
    assert str(e.value).startswith("model.p_uncond (label dropout) must be a finite number in [0, 1], got ")
    assert "\n" not in str(e.value)


def test_label_options_without_cond_are_refused():
    with pytest.raises(ValueError, match="cond=False needs a net with num_classes=None"):
        DiffusionModule(unet_config("tiny", 1, 8, 10).to_dict(), SCHEDULE, SHAPE, 10)
    with pytest.raises(ValueError, match="cond=True needs a net with num_classes and null_class=True"):
        DiffusionModule(unet_config("tiny", 1, 8, 10).to_dict(), SCHEDULE, SHAPE, 10, cond=True)
    with pytest.raises(ValueError, match="null_class=True needs num_classes"):
        unet_config("tiny", 1, 8, null_class=True)


class HeadLoss(DiffusionModule):
    """The training step before conditioning (HEAD): the reference for unconditional training."""

    def training_step(self, batch, batch_idx):
        x0 = batch[0]
        t = torch.randint(0, self.T, (x0.shape[0],), device="cpu").to(x0.device)
        eps = torch.randn(x0.shape, device="cpu").to(x0)
        out = self.net(q_sample(self.schedule, x0, t, eps), t)
        return F.mse_loss(out, eps, reduction="none").flatten(1).mean(1).mean()


def test_unconditional_training_draws_no_extra_random_numbers():
    new, head = _module(cond=False), _module(cond=False, cls=HeadLoss)
    batch = next(iter(_loader()))
    torch.manual_seed(3)
    new.training_step(batch, 0)
    after_new = torch.get_rng_state()
    torch.manual_seed(3)
    head.training_step(batch, 0)
    assert torch.equal(after_new, torch.get_rng_state())

    new, head = _module(cond=False), _module(cond=False, cls=HeadLoss)
    _fit(new, 4)
    _fit(head, 4)
    for (k, a), b in zip(new.state_dict().items(), head.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_net_without_labels_is_unchanged():
    torch.manual_seed(0)
    a = UNet(unet_config("tiny", 1, 8))
    assert a.null_label is None and a.label_emb is None and "null_class" in a.cfg.to_dict()
    torch.manual_seed(0)
    b = UNet(unet_config("tiny", 1, 8, 10))
    assert b.null_label is None and b.label_emb.num_embeddings == 10
