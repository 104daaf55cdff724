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


def first_crossing(acc: torch.Tensor, target: float) -> torch.Tensor:
    """acc [..., K] (points in scale order) -> k [...]: the curve first reaches `target` between points k and k + 1
    (0 as well when the first point is already at it), -1 where it never does."""
    mono = torch.cummax(acc.double(), dim=-1).values
    k = torch.full(acc.shape[:-1], -1, dtype=torch.long)
    k = torch.where(mono[..., 0] == target, 0, k)
    for j in range(acc.shape[-1] - 1):
        k = torch.where((k < 0) & (mono[..., j] < target) & (target <= mono[..., j + 1]), j, k)
    return k


def at_accuracy(acc: torch.Tensor, values: torch.Tensor, target: float) -> torch.Tensor:
    """acc, values [..., K] (points in scale order) -> the value at accuracy `target` [...] (NaN outside)."""
    acc, values = acc.double(), values.double()
    if acc.shape[-1] < 2:  # a single point: only a hit
        return torch.where(acc[..., 0] == target, values[..., 0], math.nan)
    k = first_crossing(acc, target)
    j = k.clamp(0, acc.shape[-1] - 2).unsqueeze(-1)
    a0, a1 = acc.gather(-1, j).squeeze(-1), acc.gather(-1, j + 1).squeeze(-1)
    v0, v1 = values.gather(-1, j).squeeze(-1), values.gather(-1, j + 1).squeeze(-1)
    # between k and k + 1 the curve itself runs from a0 < target to a1 >= target
    frac = (target - a0) / (a1 - a0).clamp_min(1e-300)
    out = torch.where(k >= 0, v0 + frac * (v1 - v0), math.nan)
    return torch.where(acc[..., 0] == target, values[..., 0], out)  # the first point already at the target


def crossing(acc: torch.Tensor, target: float) -> tuple[int, int] | None:
    """Indices (k, k + 1) of the points at_accuracy interpolates between along acc [K] ((0, 0) when the first point
    is at the target), or None outside the curve."""
    k = int(first_crossing(acc, target))
    if k < 0:
        return None
    return (0, 0) if float(acc[0]) == target else (k, k + 1)
