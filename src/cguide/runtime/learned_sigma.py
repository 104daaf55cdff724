"""The one place that decides what a learn_sigma eps-model hands the samplers.

A learn_sigma UNet (guided-diffusion's released models; UNetConfig out_channels = 2 * in_channels) returns
[eps, v]: channels :C are eps, channels C: the interpolation v between log beta_t and the log posterior
variance (improved DDPM). DDPM with sampler.var_type=learned uses v (cguide.diffusion.learned_variance), so
it gets [eps, v]; every other sampler setting (DDIM, DDPM with a fixed variance) gets eps alone."""

from __future__ import annotations

import torch
from torch import nn

from ..diffusion.learned_variance import LEARNED


def learns_sigma(net: nn.Module) -> bool:
    """Does the eps-model also output the variance interpolation v (2C output channels)?"""
    cfg = getattr(net, "cfg", None)
    return cfg is not None and getattr(cfg, "out_channels", None) == 2 * getattr(cfg, "in_channels", -1)


class EpsOnly(nn.Module):
    """net(x, t[, y]) -> its first C channels (eps), C = the input's channels."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, *label) -> torch.Tensor:
        return self.net(x, t, *label)[:, : x.shape[1]]


def check_learned_variance(nets, var_type: str | None) -> None:
    """var_type 'learned' needs every eps-model of the draw to output [eps, v]: checked before anything is
    drawn or written. nets: the draw's eps-models (Loaded), None entries skipped."""
    if var_type != LEARNED:
        return
    for loaded in nets:
        if loaded is not None and not learns_sigma(loaded.net):
            raise ValueError(f"sampler.var_type=learned needs a learn_sigma eps-model (it outputs eps and the "
                             f"variance v), but {loaded.path} predicts eps only; use a learn_sigma model (e.g. an "
                             "ADM checkpoint) or set sampler.var_type=fixed_small")


def eps_net(fast: nn.Module, net: nn.Module, var_type: str | None = None) -> nn.Module:
    """``fast`` (net on its device with the speed options) as the samplers take it: [eps, v] for a learn_sigma
    net under var_type 'learned', eps alone (its first C channels) otherwise. A net predicting eps alone is
    passed as it is (var_type 'learned' then stops at the sampler's check, naming the fix)."""
    return EpsOnly(fast) if learns_sigma(net) and var_type != LEARNED else fast
