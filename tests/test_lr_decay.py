"""model.lr_decay / classifier.lr_decay: constant after warm-up (as before), or cosine to 0 at max_steps."""

from __future__ import annotations

import math

import pytest
import torch

from cguide.config import plain
from cguide.modules.common import adamw_with_warmup, decay_steps
from cguide.modules.factory import check_training


class _Trainer:
    max_steps = 100


def _lrs(lr_decay: str, steps: int = 100) -> list[float]:
    sched = adamw_with_warmup([torch.nn.Parameter(torch.zeros(1))], 1.0, 0.0, 10,
                              decay_steps(_Trainer(), lr_decay))["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(steps + 1):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def test_cosine_decays_to_zero_at_max_steps_and_constant_stays():
    const, cos = _lrs("constant"), _lrs("cosine")
    assert const[:10] == cos[:10] == [(i + 1) / 10 for i in range(10)]  # the same linear warm-up
    assert const[10:] == [1.0] * 91
    for step in (10, 40, 55, 100):  # 0.5 (1 + cos(pi (step - warm) / (total - warm)))
        assert cos[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * (step - 10) / 90)), abs=1e-12)
    assert cos[100] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("task,key", [("diffusion", "model"), ("classifier", "classifier")])
def test_the_trained_modules_take_it(cfg_train, task, key):
    from cguide.train import train
    res = train(cfg_train(f"task={task}", f"{key}.lr_decay=cosine", f"{key}.max_steps=4", f"{key}.warmup_steps=1"))
    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["lr_decay"] == "cosine"
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)


def test_an_unknown_lr_decay_is_one_clear_line(cfg_train):
    cfg = cfg_train("task=diffusion", "model.lr_decay=linear")
    with pytest.raises(ValueError, match="unknown model.lr_decay 'linear'; known: constant, cosine"):
        check_training("diffusion", plain(cfg.model), plain(cfg.trainer))
