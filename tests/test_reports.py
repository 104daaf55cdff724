"""Experiment reports cannot drift from their results: every decimal number in an experiments/*/README.md's prose
(tables and code blocks aside) is a value of that experiment's results files (results.csv, matched.csv,
matched_judge2.csv, replicates.csv at the precision shown; evidence.md and replicates.md as generated), or is listed below with where it comes from. A sentence quoting a number its table does not
hold fails here."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# numbers quoted from elsewhere, each with its source
QUOTED = {
    "mnist5k_quick": {"16.06": "mnist5k_quick_prev at s = 0: experiments/mnist5k_cg_vs_cfg/results.csv at 6c10ea5",
                      # the profile on DDIM 50, before issue #27 moved it to DPM-Solver++ 20
                      "14.64": "DDIM 50, s = 0: experiments/mnist5k_quick/results.csv at da727f6",
                      "3.15": "DDIM 50, score s = 8: experiments/mnist5k_quick/results.csv at da727f6",
                      "0.900": "DDIM 50, score s = 4 accuracy: experiments/mnist5k_quick/results.csv at da727f6"},
}


def _numbers(path: Path) -> set[str]:
    """The experiment's results files and those of its sub-runs (e.g. n1000/: the same sweep at a larger n)."""
    out = set()
    for sub in [path, *sorted(p for p in path.iterdir() if (p / "results.csv").is_file())]:
        out |= _files_numbers(sub)
    return out


def _files_numbers(path: Path) -> set[str]:
    out = set()
    for name in ("results.csv", "matched.csv", "matched_judge2.csv", "replicates.csv"):
        f = path / name
        if not f.is_file():
            continue
        for row in csv.DictReader(f.open()):
            for v in row.values():
                try:
                    x = float(v)
                except (TypeError, ValueError):
                    continue
                out.update(f"{abs(x):.{k}f}" for k in range(5))  # the prose's regex leaves the sign out
    for report in (path / "evidence.md", path / "replicates.md"):  # as generated (every number in them)
        if report.is_file():
            out.update(re.findall(r"\d+\.\d+", report.read_text()))
    return out


def prose_numbers(text: str) -> list[str]:
    lines, code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            code = not code
            continue
        if not code and not line.lstrip().startswith("|"):
            lines.append(re.sub(r"`[^`]*`|\([^)]*\.(md|csv|png|py)[^)]*\)", "", line))  # inline code, links
    return re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", "\n".join(lines))


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.iterdir() if (p / "README.md").is_file()))
def test_every_number_in_the_prose_is_in_the_results(name):
    folder = EXPERIMENTS / name
    have = _numbers(folder) | set(QUOTED.get(name, {}))
    missing = [n for n in prose_numbers((folder / "README.md").read_text()) if n not in have]
    assert not missing, f"{name}/README.md quotes {missing}, not in its results files nor listed in QUOTED"


def test_a_drifted_number_is_caught(tmp_path):
    (tmp_path / "results.csv").write_text("point,fid_judge\np,3.42\n")
    assert [n for n in prose_numbers("FID 3.42 at s = 8 and 3.5 elsewhere.") if n not in _numbers(tmp_path)] == ["3.5"]


# what decides an experiment's samples: its exported config.yaml (the run's) must still be what its experiment composes
DRAWN = ("sampler", "diffusion", "guidance")
SWEEP_AXES = ("methods", "variants", "scales", "samplers", "steps", "sampler_steps", "method_scales", "settings",
              "n_per_point", "seed")


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.iterdir() if (p / "config.yaml").is_file()
                                        and (EXPERIMENTS.parent / "conf" / "experiment" / f"{p.name}.yaml").is_file()))
def test_the_experiment_config_still_draws_what_was_exported(name, tmp_path):
    """A profile edit (e.g. the quick profile's sampler) must not silently change an experiment that inherits it:
    rerunning its command would draw other samples than its README reports."""
    from omegaconf import OmegaConf

    from helpers.config import compose_cfg

    run = OmegaConf.load(EXPERIMENTS / name / "config.yaml")
    run.paths = {}  # ${hydra:...} resolves only inside a Hydra run
    exported = OmegaConf.to_container(run, resolve=True)
    now = OmegaConf.to_container(compose_cfg("pipeline", [f"experiment={name}"], tmp_path), resolve=True)
    for part in DRAWN:
        old = exported.get(part, {})
        assert {k: now[part].get(k) for k in old} == old, f"{name}: {part} differs from the exported config.yaml"
    for axis in SWEEP_AXES:
        if axis in exported["sweep"]:
            assert now["sweep"][axis] == exported["sweep"][axis], f"{name}: sweep.{axis} differs from config.yaml"
