"""The metric registry (cguide.metrics.registry, #27 item 5): a metric is one registered function, and a metric
registered here, in the test only, reaches compute_metrics' values, the rows with their interval and a sweep's
results.jsonl without any other module knowing it; names are checked against the registry."""

import json
import math

import pytest
import torch

from cguide.metrics import METRICS, MetricSettings, compute_metrics, register_metric
from cguide.metrics.intervals import row_metrics


def _brightness_reps(d) -> dict:
    values = d.values("brightness")
    return {} if values is None else {"brightness": d.mean(values)}


@pytest.fixture
def brightness():
    """A toy metric: the mean pixel value of the finite samples in [0, 1], with bootstrap replicates."""

    @register_metric("brightness", replicate=_brightness_reps, bounds=(0.0, 1.0),
                     titles={"brightness": "mean pixel value"})
    def point(m) -> dict[str, float]:
        per_sample = per_sample_brightness(m.x)
        m.keep_values("brightness", per_sample)
        return {"brightness": per_sample.mean().item() if m.n else float("nan")}

    yield per_sample_brightness
    del METRICS["brightness"]


def per_sample_brightness(x: torch.Tensor) -> torch.Tensor:
    return ((x.double() + 1) / 2).mean(dim=(1, 2, 3))


def test_a_registered_metric_flows_to_the_values_and_the_rows(brightness):
    x = torch.rand(40, 1, 8, 8) * 2 - 1
    x[5, 0, 0, 0] = float("nan")  # left out, as for every metric
    y = torch.arange(40) % 4
    settings = MetricSettings(names=("brightness", "nonfinite"), interval_resamples=50)
    keep: dict = {}
    values = compute_metrics(x, y, torch.zeros(4, 1, 8, 8), judge=None, settings=settings, keep=keep)
    finite = torch.ones(40, dtype=torch.bool)
    finite[5] = False
    assert list(values) == ["nonfinite", "brightness"]  # registry order: the built-in ones first
    assert values["nonfinite"] == pytest.approx(1 / 40)
    assert values["brightness"] == brightness(x[finite]).mean().item()
    row, reps = row_metrics(values, keep, settings)
    assert row["brightness"] == values["brightness"] and set(reps) == {"nonfinite", "brightness"}
    assert 0.0 <= row["brightness_lo"] < row["brightness"] < row["brightness_hi"] <= 1.0
    assert reps["brightness"].shape == (50,)


def test_names_are_checked_against_the_registry(brightness):
    assert MetricSettings(names=("brightness",)).names == ("brightness",)
    assert not MetricSettings(names=("brightness",)).needs_judge  # it asks for neither judge nor features
    with pytest.raises(ValueError, match=r"^unknown metric\(s\) \['fidd'\] in metrics.names; known: fid, fid_inf, "
                                         r"kid, is, prc, accuracy, guide_confidence, classwise_fid, nonfinite, "
                                         r"brightness$"):
        MetricSettings(names=("fidd",))
    with pytest.raises(ValueError, match="registered twice"):
        register_metric("brightness")(lambda m: {})
    # the second judge's metrics are measured with it, never named
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['judge_agreement'\]"):
        MetricSettings(names=("judge_agreement",))


def test_a_registered_metric_reaches_a_sweeps_rows_plots_and_objective(brightness, cfg_sweep):
    """Its rows, its plot against the scale (titled as registered) and the sweeper's objective names come from
    the registry entry alone."""
    from cguide.grid.objective import check_objective, objective_metrics
    from cguide.grid.runner import run_sweep

    cfg = cfg_sweep("sweep.scales=[0]", "metrics.names=[brightness]", "objective.metrics=[brightness]")
    assert objective_metrics()["brightness"] == "brightness"
    check_objective(cfg)  # a name the registry does not know is refused (test_objective)
    out = run_sweep(cfg)
    assert (out / "plots" / "brightness_vs_scale.png").is_file()
    [row] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {"brightness", "brightness_lo", "brightness_hi", "nonfinite"} <= set(row)
    assert all(math.isfinite(row[k]) for k in ("brightness", "brightness_lo", "brightness_hi"))
    assert "fid_judge" not in row and "accuracy" not in row
