"""Metrics at matched judge accuracy: a method's value where its scale curve reaches a target accuracy.

Along one method's points in scale order, accuracy is made monotone by its running maximum (a dip after a
peak counts as the peak: the curve has already reached that accuracy at a smaller scale); the value at
target accuracy a* is then linear interpolation (in accuracy) between the two points where the curve first
crosses a*. A target below the curve's first accuracy or above its highest is outside the curve (NaN).
The same rule runs inside every bootstrap replicate (the replicates of all points hold the same rows), so the
value at a* gets an interval, and two methods' values at a* a paired difference. That interval is the samples'
only: the interpolation's own error is not in it (FID is far from linear in accuracy between distant points), so
`crossing` names the two points a value rests on, and a report can say when neither is near the target.
"""

from __future__ import annotations

import math

import torch


def check_targets(targets) -> list[float]:
    """The target accuracies, each in (0, 1), or one line naming the bad one."""
    out = []
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) < 1.0:
            shown = f"{t:g}" if isinstance(t, (int, float)) and not isinstance(t, bool) else repr(t)
            raise ValueError(f"target accuracy {shown} in metrics.match_accuracy must lie in (0, 1), e.g. "
                             "metrics.match_accuracy=[0.9,0.95,0.975]")
        out.append(float(t))
    return out


def at_accuracy(acc: torch.Tensor, values: torch.Tensor, target: float) -> torch.Tensor:
    """acc, values [..., K] (points in scale order) -> the value at accuracy `target` [...] (NaN outside)."""
    acc, values = acc.double(), values.double()
    mono = torch.cummax(acc, dim=-1).values
    out = torch.full(acc.shape[:-1], math.nan, dtype=torch.float64)
    done = torch.zeros(acc.shape[:-1], dtype=torch.bool)
    hit = (mono[..., 0] == target)  # the first point already at the target
    out = torch.where(hit, values[..., 0], out)
    done |= hit
    for k in range(acc.shape[-1] - 1):
        inside = ~done & (mono[..., k] < target) & (target <= mono[..., k + 1])  # the first crossing
        a0, a1 = acc[..., k], acc[..., k + 1]  # there the curve itself runs from a0 < target to a1 >= target
        frac = (target - a0) / (a1 - a0).clamp_min(1e-300)
        val = values[..., k] + frac * (values[..., k + 1] - values[..., k])
        out = torch.where(inside, val, out)
        done |= inside
    return out


def crossing(acc: torch.Tensor, target: float) -> tuple[int, int] | None:
    """Indices (k, k + 1) of the points at_accuracy interpolates between along acc [K] ((0, 0) when the first point
    is at the target), or None outside the curve."""
    acc = acc.double()
    mono = torch.cummax(acc, dim=-1).values
    if mono[0] == target:
        return 0, 0
    for k in range(acc.shape[-1] - 1):
        if mono[k] < target <= mono[k + 1]:
            return k, k + 1
    return None
