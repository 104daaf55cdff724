"""experiments/export.py: copies a run's artefacts and never leaves an earlier export's picture as this run's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _export():
    spec = importlib.util.spec_from_file_location("export", ROOT / "experiments" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, eps_grid: bool) -> Path:
    run = tmp_path / "run"
    sweep = run / "sweep" / "abc"
    for sub in ("plots", "grids"):
        (sweep / sub).mkdir(parents=True)
    (sweep / "grids" / "p.png").write_bytes(b"grid")
    (sweep / "plots" / "fid.png").write_bytes(b"plot")
    (run / "hydra" / "x" / ".hydra").mkdir(parents=True)
    (run / "hydra" / "x" / ".hydra" / "config.yaml").write_text("name: t\n")
    row = {"point": "p", "method": "classifier", "scale": 8.0, "variant": "score", "fid": 3.15, "accuracy": 0.976}
    (sweep / "results.jsonl").write_text(json.dumps(row) + "\n")
    (sweep / "results.csv").write_text("point,fid\np,3.15\n")
    (sweep / "sweep.json").write_text("{}")
    if eps_grid:
        (run / "diffusion" / "samples").mkdir(parents=True)
        (run / "diffusion" / "samples" / "step_0000700.png").write_bytes(b"eps grid")
    return run


def test_export_copies_the_run_and_drops_a_stale_eps_grid(tmp_path):
    export, exp = _export(), tmp_path / "exp"
    export.main(str(_run(tmp_path / "a", eps_grid=True)), str(exp))
    assert (exp / "eps_model_samples.png").read_bytes() == b"eps grid"
    assert (exp / "grids" / "p.png").is_file() and (exp / "config.yaml").is_file()
    assert "| classifier | 8 | score | 3.15 |" in (exp / "results.md").read_text()
    export.main(str(_run(tmp_path / "b", eps_grid=False)), str(exp))  # a run without the end-of-training grid
    assert not (exp / "eps_model_samples.png").exists()


def test_the_exported_config_is_the_last_run_that_drew_into_the_sweep(tmp_path):
    """The run that made the sweep, unless later runs extended it (extend_sweep=<it>): then the newest of those,
    whose grid holds the added points; runs of other sweeps after it are not taken."""
    import os

    export = _export()
    run = _run(tmp_path, eps_grid=False)
    sweep = run / "sweep" / "abc"

    def config(name: str, text: str, when: float) -> None:
        path = run / "hydra" / name / ".hydra" / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (when, when))

    made = (sweep / "sweep.json").stat().st_mtime
    config("x", "name: maker\n", made - 10)
    config("y", "name: other sweep\n", made + 10)
    assert export.sweep_config_file(run, sweep).read_text() == "name: maker\n"
    config("z", f"name: extended\nextend_sweep: {sweep}\n", made + 20)
    config("w", "name: other sweep again\nextend_sweep: elsewhere\n", made + 30)
    assert export.sweep_config_file(run, sweep).read_text().startswith("name: extended")


def test_subset_report_is_the_sweeps_own_report_without_the_points_left_out(tmp_path):
    """experiments/subset_report.py: the kept rows and their stored replicates, nothing drawn again; a point the
    sweep does not hold is refused with one line."""
    import importlib.util

    import pytest
    import torch

    from cguide.grid.evidence_store import write_evidence
    from cguide.grid.results import ResultsFolder
    from cguide.metrics import MetricSettings

    spec = importlib.util.spec_from_file_location("subset_report", ROOT / "experiments" / "subset_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep, settings, targets = tmp_path / "sweep", MetricSettings(interval_resamples=20), torch.arange(40) % 4
    folder = ResultsFolder(sweep)
    folder.claim({"n_per_point": 40}, {})
    for scale, acc, fid in ((0.0, 0.2, 10.0), (1.0, 0.9, 4.0), (1.5, 0.95, 3.0), (2.0, 1.0, 3.5)):
        key = f"s{scale:g}"
        write_evidence(sweep, key, {"accuracy": torch.full((20,), acc), "fid_judge": torch.full((20,), fid)},
                       targets, settings)
        folder.append({"point": key, "method": "classifier", "variant": "score", "scale": scale, "sampler": "ddim",
                       "steps": 5, "accuracy": acc, "fid_judge": fid, "interval_level": 0.95})
    kept = module.subset_report(sweep, tmp_path / "coarse", {"s1.5"}, (0.95,))
    assert kept == ["s0", "s1", "s2"] and "s1.5" not in (tmp_path / "coarse" / "results.csv").read_text()
    assert "| score | 0.95 | 1.5 | 3.75 [" in (tmp_path / "coarse" / "evidence.md").read_text()  # 4 -> 3.5 halfway
    with pytest.raises(SystemExit, match="holds no point s9; name points as its results.csv does"):
        module.subset_report(sweep, tmp_path / "x", {"s9"})
