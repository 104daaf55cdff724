"""Metrics at matched judge accuracy (metrics/matched.py) and the sweep's evidence report (grid/evidence.py),
on hand-made curves whose interpolated values are known."""

from __future__ import annotations

import math

import pytest
import torch

from cguide.grid.evidence import comparisons, matched_table, write_report
from cguide.grid.evidence_store import write_evidence
from cguide.grid.results import ResultsFolder
from cguide.metrics import MetricSettings
from cguide.metrics.matched import at_accuracy, check_targets


def test_linear_interpolation_between_the_bracketing_points():
    acc = torch.tensor([0.1, 0.8, 0.9, 1.0], dtype=torch.float64)
    fid = torch.tensor([20.0, 6.0, 4.0, 5.0], dtype=torch.float64)
    assert at_accuracy(acc, fid, 0.85).item() == pytest.approx(5.0)  # halfway between 6 and 4
    assert at_accuracy(acc, fid, 0.9).item() == pytest.approx(4.0)  # a point itself
    assert at_accuracy(acc, fid, 0.1).item() == pytest.approx(20.0)
    assert math.isnan(at_accuracy(acc, fid, 0.05).item())  # below the curve: outside
    assert math.isnan(at_accuracy(torch.tensor([0.1, 0.5]), torch.tensor([1.0, 2.0]), 0.9).item())  # never reached


def test_a_dip_after_a_peak_keeps_the_first_crossing():
    # accuracy 0.1, 0.95, 0.90 (dip), 0.97: 0.92 is first reached between s0 and s1, not after the dip
    acc = torch.tensor([0.1, 0.95, 0.90, 0.97])
    fid = torch.tensor([10.0, 2.0, 3.0, 4.0])
    assert at_accuracy(acc, fid, 0.92).item() == pytest.approx(10.0 + (0.92 - 0.1) / 0.85 * (2.0 - 10.0))
    # 0.96 lies above the peak: between the dip (0.90) and 0.97, on the curve itself
    assert at_accuracy(acc, fid, 0.96).item() == pytest.approx(3.0 + (0.96 - 0.90) / 0.07 * 1.0)


def test_replicates_are_interpolated_row_by_row():
    acc = torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.1, 1.0]])
    fid = torch.tensor([[10.0, 2.0], [10.0, 2.0], [10.0, 1.0]])
    got = at_accuracy(acc, fid, 0.85)
    assert got[0].item() == pytest.approx(10 - 8 * 0.75 / 0.8) and math.isnan(got[1].item())
    assert got[2].item() == pytest.approx(10 - 9 * 0.75 / 0.9)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, "x", True])
def test_targets_outside_the_open_unit_interval_are_refused(bad):
    with pytest.raises(ValueError, match=r"target accuracy .* in metrics.match_accuracy must lie in \(0, 1\)"):
        check_targets([0.9, bad])
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        MetricSettings(match_accuracy=(bad,))


def _sweep(tmp_path, shift_b: float, noise: float = 0.01, resamples: int = 200, acc_half: dict | None = None):
    """Two series (a, b) at scales 0, 1, 2, the same rows; b's FID is a's + shift_b at every replicate +- noise;
    acc_half: per series, the half-width of its points' accuracy intervals (none given: no intervals)."""
    settings = MetricSettings(interval_resamples=resamples)
    folder = ResultsFolder(tmp_path)
    targets = torch.arange(40) % 4
    g = torch.Generator().manual_seed(0)
    accs = [0.2, 0.9, 1.0]
    base_fid = [10.0, 4.0, 3.0]
    for variant, shift in (("a", 0.0), ("b", shift_b)):
        for scale, acc, fid in zip((0.0, 1.0, 2.0), accs, base_fid):
            key = f"{variant}-{scale}"
            acc_r = acc + 0.01 * torch.randn(resamples, generator=torch.Generator().manual_seed(int(scale)))
            fid_r = fid + shift + noise * torch.randn(resamples, generator=g)
            write_evidence(tmp_path, key, {"accuracy": acc_r.clamp(0, 1), "fid_judge": fid_r}, targets, settings)
            folder.append({"point": key, "method": "classifier", "variant": variant, "scale": scale, "sampler": "ddim",
                           "steps": 5, "accuracy": acc, "fid_judge": fid + shift, "interval_level": 0.95,
                           **({"accuracy_lo": acc - acc_half[variant], "accuracy_hi": acc + acc_half[variant]}
                              if acc_half else {})})
    return folder.rows()


def test_report_separates_a_real_difference_and_not_a_null_one(tmp_path):
    rows = _sweep(tmp_path / "shifted", shift_b=1.0)
    entries = matched_table(rows, tmp_path / "shifted", (0.95,))
    (a, b) = entries
    assert a["values"]["fid_judge"][0] == pytest.approx(3.5) and b["values"]["fid_judge"][0] == pytest.approx(4.5)
    assert a["scale"] == pytest.approx(1.5)
    (cmp,) = comparisons(entries)
    assert cmp["diff"].separated and cmp["diff"].verdict().startswith("a lower fid_judge than b: 95 % interval")
    path = write_report(tmp_path / "shifted", (0.95, 0.1))
    text = path.read_text()
    assert "| a | 0.95 | 1.5 | 3.5 [" in text and "| a | 0.1 | - | outside its range [0.200, 1.000]" in text
    assert (tmp_path / "shifted" / "plots" / "fid_at_matched_accuracy.png").is_file()
    same = _sweep(tmp_path / "same", shift_b=0.0, noise=0.5)
    (cmp,) = comparisons(matched_table(same, tmp_path / "same", (0.95,)))
    assert not cmp["diff"].separated and "not separated" in cmp["diff"].verdict()


def test_a_separated_difference_resting_on_a_far_interpolation_is_marked(tmp_path):
    """The interval of a matched value holds the samples' noise, not the interpolation's error: the report names the
    drawn points each value rests on and whether one of them is at the target (its accuracy interval holds it), and
    marks a separated difference whose side is interpolated between points that all miss the target."""
    _sweep(tmp_path, shift_b=1.0, acc_half={"a": 0.03, "b": 0.01})  # a's s = 1 (0.9 +- 0.03) holds 0.92, b's not
    entries = matched_table(ResultsFolder(tmp_path).rows(), tmp_path, (0.92,))
    assert [e["bracket"] for e in entries] == [{"points": [(1.0, 0.9), (2.0, 1.0)], "near": 1.0},
                                               {"points": [(1.0, 0.9), (2.0, 1.0)], "near": None}]
    (cmp,) = comparisons(entries)
    assert cmp["diff"].separated and cmp["far"] == ["b"]
    text = write_report(tmp_path, (0.92, 0.9)).read_text()
    assert "| a | 0.92 | 1.2 | 3.8 [" in text and "| 1: 0.900 / 2: 1.000 | s = 1 |" in text
    assert "| 1: 0.900 / 2: 1.000 | no |" in text  # b at 0.92
    assert ("- acc 0.92: a lower fid_judge than b: 95 % interval of the difference [" in text
            and "] (interpolated far from a drawn point for b: the grid may decide this" in text)
    at_point = next(line for line in text.splitlines() if line.startswith("- acc 0.9:"))
    assert at_point.endswith("]")  # 0.9 is a drawn point of both: no mark
    csv_text = (tmp_path / "matched.csv").read_text().splitlines()
    assert csv_text[0].endswith(",reached,bracket,near_scale") and csv_text[1].endswith(",1:0.9000 2:1.0000,1.0")


def test_points_with_other_resamplings_are_not_paired(tmp_path):
    _sweep(tmp_path, shift_b=1.0)
    write_evidence(tmp_path, "a-1.0", {"accuracy": torch.rand(200), "fid_judge": torch.rand(200)},
                   torch.arange(41) % 4, MetricSettings())  # other targets: other replicates
    with pytest.raises(ValueError, match="replicates of 2 different resamplings"):
        matched_table(ResultsFolder(tmp_path).rows(), tmp_path, (0.95,))


def _replicate(root, fid_shift: float, n_per_point: int = 40):
    folder = ResultsFolder(root)
    folder.claim({"eps_ckpt": {"sha256": f"{fid_shift}"}, "n_per_point": n_per_point, "seed": 0}, {})
    for scale, acc, fid in ((0.0, 0.2, 10.0), (1.0, 0.9, 4.0)):
        folder.append({"point": f"p{scale:g}", "method": "classifier", "variant": "score", "scale": scale,
                       "accuracy": acc, "fid_judge": fid + fid_shift, "fid_judge_lo": fid + fid_shift - 0.2,
                       "fid_judge_hi": fid + fid_shift + 0.2})
    return root


def test_replicates_report_the_mean_over_seeds_with_a_t_interval(tmp_path):
    from cguide.grid.replicates import aggregate, main

    folders = [_replicate(tmp_path / f"s{i}", shift) for i, shift in enumerate((0.0, 0.5, 1.0))]
    points, _ = aggregate(folders)
    p1 = next(p for p in points if p["point"] == "p1")
    half = 4.302653 * 0.5 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (p1["fid_judge"], p1["fid_judge_lo"], p1["fid_judge_hi"]) == pytest.approx((4.5, 4.5 - half, 4.5 + half))
    assert p1["fid_judge_sampling_width"] == pytest.approx(0.4) and p1["seeds"] == 3
    main([str(tmp_path / "report"), *map(str, folders)])
    assert "| p1 | fid_judge | 4.5 [" in (tmp_path / "report" / "replicates.md").read_text()


def test_replicate_intervals_stay_where_the_metric_lies():
    """A mean of proportions near 1 (or of FIDs near 0) with a wide t interval is clamped to [0, 1] (to >= 0);
    an unbounded metric and an unregistered column are not."""
    from cguide.grid.replicates import t_interval
    from cguide.metrics.registry import value_bounds

    assert value_bounds("accuracy") == (0.0, 1.0) and value_bounds("recall") == (0.0, 1.0)
    assert value_bounds("fid")[0] == 0.0 and value_bounds("kid") == (-math.inf, math.inf)
    assert value_bounds("no_such_metric") == (-math.inf, math.inf)
    acc = [0.99, 1.0, 0.95]
    mean, lo, hi = t_interval(acc, 0.95)
    assert hi > 1.0  # the plain t interval crosses 1 ...
    assert t_interval(acc, 0.95, value_bounds("accuracy")) == pytest.approx((mean, lo, 1.0))  # ... the clamped one not
    fid = [2.0, 80.0, 160.0]
    assert t_interval(fid, 0.95)[1] < 0 and t_interval(fid, 0.95, value_bounds("fid"))[1] == 0.0
    assert t_interval([-0.1, 0.05, 0.2], 0.95, value_bounds("kid")) == pytest.approx(t_interval([-0.1, 0.05, 0.2], 0.95))


def test_replicates_of_other_settings_are_refused_with_one_line(tmp_path, capsys):
    from cguide.grid.replicates import main

    a, b = _replicate(tmp_path / "a", 0.0), _replicate(tmp_path / "b", 1.0, n_per_point=80)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "report"), str(a), str(b)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == [f"error: sweep folders {a} and {b} differ in n_per_point: replicates must "
                                         "share every setting but the training seed (their checkpoints); report them "
                                         "apart"]
    assert not (tmp_path / "report").exists()


def test_series_are_compared_seed_by_seed_at_matched_accuracy():
    """The paired difference within each seed, then its t interval: a shift shared by both series in one seed
    (that seed's networks) cancels, so a steady gap of 1.0 +- 0.2 is separated although each series alone
    varies by 5 across seeds; a gap that changes sign is not; a seed where one series misses the target drops."""
    from cguide.grid.replicates import paired_across_seeds

    seed_shift = {0: 0.0, 1: 5.0, 2: -5.0}
    matched = {("a", 0.9, "fid_judge"): {j: 4.0 + seed_shift[j] + d for j, d in enumerate((1.0, 1.2, 0.8))},
               ("b", 0.9, "fid_judge"): {j: 4.0 + seed_shift[j] for j in range(3)},
               ("c", 0.9, "fid_judge"): {0: 5.0, 1: 8.0, 2: -0.5, 3: 1.0},
               ("a", 0.9, "accuracy"): {0: 0.9, 1: 0.9, 2: 0.9}}
    rows = {(r["a"], r["b"]): r for r in paired_across_seeds(matched, 0.95)}
    assert set(rows) == {("a", "b"), ("a", "c"), ("b", "c")}  # accuracy is not a compared metric
    ab = rows["a", "b"]
    half = 4.302653 * 0.2 / math.sqrt(3)
    assert (ab["mean"], ab["lo"], ab["hi"], ab["seeds"]) == pytest.approx((1.0, 1.0 - half, 1.0 + half, 3))
    assert ab["verdict"].startswith("a higher fid_judge than b")
    assert rows["b", "c"]["verdict"] == "not separated" and rows["b", "c"]["seeds"] == 3
    # a separated verdict says in how many of its seeds a side rests on a far interpolation; "not separated" not
    marked = {(r["a"], r["b"]): r for r in paired_across_seeds(matched, 0.95, far={("b", 0.9): {1}, ("c", 0.9): {0}})}
    assert marked["a", "b"]["far_seeds"] == 1 and marked["a", "b"]["verdict"].endswith(
        "; in 1 of its 3 seeds a side is interpolated far from a drawn point (the grid may decide this)")
    assert marked["b", "c"]["far_seeds"] == 2 and marked["b", "c"]["verdict"] == "not separated"
