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
