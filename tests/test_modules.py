"""The LightningModules on tiny nets, built directly (no Hydra): the EMA (arithmetic and resume) and the
torchmetrics-based logging of losses and accuracies."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cguide.io.checkpoints import load_net, read_checkpoint
from cguide.modules import DiffusionModule, JudgeModule, NoisyClassifierModule, SampleGrid
from cguide.nets import encoder_config, judge_config, unet_config

SCHEDULE = {"kind": "linear", "T": 100}
SHAPE = [1, 8, 8]


def _loader(n: int = 16, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *SHAPE, generator=g) * 2 - 1
    return DataLoader(TensorDataset(x, torch.randint(0, 10, (n,), generator=g)), batch_size=batch_size)


def _trainer(max_steps: int = -1, callbacks=()) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))


def _eps_model(seed: int = 0, **kw) -> DiffusionModule:
    torch.manual_seed(seed)
    return DiffusionModule(unet_config("tiny", 1, 8).to_dict(), SCHEDULE, SHAPE, 10, warmup_steps=2, **kw)


def old_ema_update(ema, net, global_step: int, decay: float) -> None:
    """The hand-written EMA update DiffusionModule had before AveragedModel: the reference."""
    d = min(decay, (1 + global_step) / (10 + global_step))
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - d)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


class OldEMA(L.Callback):
    def __init__(self, module: DiffusionModule):
        self.ema = copy.deepcopy(module.net).requires_grad_(False)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, *args):
        old_ema_update(self.ema, module.net, trainer.global_step, module.hparams.ema_decay)


class Reseed(L.Callback):
    """The same t and noise at each step, interrupted or not (Lightning does not restore the RNG)."""

    def on_train_batch_start(self, trainer, *args):
        torch.manual_seed(1000 + trainer.global_step)


class SnapshotEMA(L.Callback):
    def on_train_start(self, trainer, module):
        self.state = {k: v.clone() for k, v in module.ema.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def test_ema_matches_hand_written_update(tmp_path):
    # decay 0.3: the warm-up (1 + n) / (10 + n) is below it for 2 steps, then clamped to it
    module = _eps_model(ema_decay=0.3)
    ref = OldEMA(module)
    _trainer(5, [ref, SampleGrid(every_n_steps=0, n=2, steps=2, dirpath=str(tmp_path))]).fit(module, _loader())
    _assert_same(module.ema.module.state_dict(), ref.ema.state_dict())
    assert int(module.ema.n_averaged) == 6
    assert not torch.equal(next(module.ema.parameters()), next(module.net.parameters()))
    assert (tmp_path / "step_0000005.png").is_file()  # SampleGrid draws from module.ema


def test_ema_resume_is_exact(tmp_path):
    full = _eps_model()
    _trainer(6, [Reseed()]).fit(full, _loader())

    first = _eps_model()
    trainer = _trainer(3, [Reseed()])
    trainer.fit(first, _loader())
    path = tmp_path / "step3.ckpt"
    trainer.save_checkpoint(path)
    ckpt = read_checkpoint(path)
    sd = ckpt["state_dict"]
    assert ckpt["global_step"] == 3 and int(sd["ema.n_averaged"]) == 4
    assert all(k.startswith(("net.", "ema.")) for k in sd)  # no metric states among the weights
    _assert_same(load_net(path, "eps_model").net.state_dict(),
                 {k[len("ema.module."):]: v for k, v in sd.items() if k.startswith("ema.module.")})

    resumed, snap = _eps_model(seed=1), SnapshotEMA()
    _trainer(6, [Reseed(), snap]).fit(resumed, _loader(), ckpt_path=path)
    _assert_same(snap.state, {k[len("ema."):]: v for k, v in sd.items() if k.startswith("ema.")})
    assert any(not torch.equal(v, sd["net." + k[len("ema.module."):]])
               for k, v in sd.items() if k.startswith("ema.module."))
    _assert_same(resumed.ema.state_dict(), full.ema.state_dict())
    _assert_same(resumed.net.state_dict(), full.net.state_dict())

    # A checkpoint from before AveragedModel (EMA under 'ema.', no count) resumes just as exactly.
    ckpt["state_dict"] = {("ema." + k[len("ema.module."):] if k.startswith("ema.module.") else k): v
                          for k, v in sd.items() if k != "ema.n_averaged"}
    torch.save(ckpt, tmp_path / "old.ckpt")
    old = _eps_model(seed=1)
    _trainer(6, [Reseed()]).fit(old, _loader(), ckpt_path=tmp_path / "old.ckpt")
    _assert_same(old.ema.state_dict(), full.ema.state_dict())


@torch.no_grad()
def test_noisy_classifier_logged_accuracy_matches_hand_count():
    torch.manual_seed(0)
    module = NoisyClassifierModule(encoder_config("tiny", 1, 8, 10).to_dict(), SCHEDULE, SHAPE, 10)
    loader = _loader(40, 16)  # batches of 16, 16 and 8: the epoch value weighs samples, not batches
    logged = _trainer().validate(module, loader, verbose=False)[0]
    module.eval()
    correct, quarter = [], []
    for i, (x, y) in enumerate(loader):
        x_t, t = module._noisy(x, torch.Generator().manual_seed(i))
        correct.append((module.net(x_t, t).argmax(-1) == y).float())
        quarter.append((t * 4 // module.T).clamp(max=3))
    correct, quarter = torch.cat(correct), torch.cat(quarter)
    assert logged["val/acc"] == float(correct.sum() / len(correct))
    for q in range(4):
        sel = quarter == q
        if sel.any():
            assert logged[f"val/acc_q{q + 1}"] == float(correct[sel].sum() / sel.sum()), q
        else:
            assert f"val/acc_q{q + 1}" not in logged


@torch.no_grad()
def test_eps_model_logged_quartile_losses_match_hand_means():
    module = _eps_model()
    loader = _loader(40, 16)
    logged = _trainer().validate(module, loader, verbose=False)[0]
    losses, quarter = [], []
    for i, (x, _) in enumerate(loader):
        loss, t = module.loss_per_sample(module.ema.module.eval(), x, torch.Generator().manual_seed(i))
        losses.append(loss)
        quarter.append((t * 4 // module.T).clamp(max=3))
    losses, quarter = torch.cat(losses), torch.cat(quarter)
    assert logged["val/loss"] == pytest.approx(float(losses.mean()), rel=1e-6)
    for q in range(4):
        sel = quarter == q
        if sel.any():
            assert logged[f"val/loss_q{q + 1}"] == pytest.approx(float(losses[sel].mean()), rel=1e-6), q


@torch.no_grad()
def test_judge_test_acc_is_the_whole_split_accuracy():
    torch.manual_seed(0)
    net_cfg = judge_config("tiny", 1, 8, 10).to_dict()
    module = JudgeModule(net_cfg, SHAPE, 10)
    loader = _loader(40, 16)
    logged = _trainer().test(module, loader, verbose=False)[0]
    module.eval()
    correct = torch.cat([(module.net(x).argmax(-1) == y).float() for x, y in loader])
    acc = float(correct.sum() / len(correct))
    assert module.test_acc == acc and logged["test/acc"] == acc
    assert module.cguide_meta() == {"kind": "judge", "weights_prefix": "net.", "net_config": net_cfg,
                                    "image_shape": SHAPE, "num_classes": 10, "schedule": None,
                                    "fingerprint": None, "extra": {"test_acc": acc}}
