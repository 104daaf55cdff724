"""The sweep's own checks (its numbers, the checkpoints against the grid and the data, the real split);
run_sweep runs them all before it claims the results folder."""

from __future__ import annotations

from ..diffusion import make_schedule
from ..io.checkpoints import Loaded
from ..metrics import MetricSettings
from .points import Point


def check_sweep_numbers(sw) -> None:
    for key, what, e_g in [("n_per_point", "samples per point", 100), ("batch_size", "samples per network call", 500),
                           ("grid_per_class", "samples per class in each point's grid", 8)]:
        if sw[key] < 1:
            raise ValueError(f"sweep.{key} must be >= 1 ({what}), got {sw[key]}; set sweep.{key} to a positive "
                             f"integer, e.g. {e_g}")
    if sw.get("points_per_call") is not None and sw.points_per_call < 1:
        raise ValueError(f"sweep.points_per_call must be >= 1 (points drawn together) or null for all, got "
                         f"{sw.points_per_call}")
    if sw.get("grid_classes") is not None and sw.grid_classes < 1:
        raise ValueError(f"sweep.grid_classes must be >= 1 (classes shown in each point's grid) or null for every "
                         f"class, got {sw.grid_classes}")


def check_sampling(eps: Loaded, points: list[Point]) -> None:
    """Step counts against the eps-model's T: the one sampler check that needs the checkpoint."""
    schedule = make_schedule(**eps.schedule)
    for sampler in {p.sampler for p in points}:
        sampler.plan(schedule)
    for p in points:  # what needs the schedule or the sampler: sigma intervals, grad_at=posterior_mean
        p.guidance.check_against(schedule, p.sampler)


def check_same_images(eps: Loaded, what: str, image_shape, num_classes) -> None:
    if (tuple(image_shape), num_classes) != (eps.image_shape, eps.num_classes):
        raise ValueError(f"{what} gives {num_classes} classes of images {list(image_shape)}, the eps-model "
                         f"{eps.path} makes {eps.num_classes} classes of {list(eps.image_shape)}; "
                         "use matching data settings (e.g. data.image_size) and checkpoints")


def check_real(settings: MetricSettings, n_real: int, data_name: str) -> None:
    if settings.feature_metrics_wanted and n_real < 2:
        raise ValueError(f"data '{data_name}' has {n_real} test image(s): FID, KID and precision/recall need at "
                         "least 2 real images; use data with a larger test split")
