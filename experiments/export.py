"""Copy a pipeline run's artefacts into an experiment folder and write its measured table.

    python experiments/export.py outputs/pipeline/mnist5k_quick experiments/mnist5k_quick
    python experiments/export.py outputs/pipeline/mnist5k_quick experiments/x outputs/pipeline/mnist5k_quick/sweep/<id>

The sweep is the run's newest one unless named (several experiments may share a run folder).

Copies: the resolved config, results.csv/.jsonl, plots, per-point grids, the evidence report (evidence.md,
matched.csv, evidence/*.pt), the eps-model's final sample grid (when the run drew one); writes results.md (the
table, every number straight from results.csv)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from cguide.grid.results import ResultsFolder, options_label
from cguide.metrics.intervals import base_name, find_key

# (metric, title, format); feature metrics are found under their row name (fid -> fid_judge) and titled with
# their feature space; a value with an interval prints as "3.15 [2.81, 3.52]"
COLUMNS = [("method", "method", "{}"), ("scale", "scale", "{:g}"), ("variant", "variant", "{}"), ("fid", "FID", "{:.2f}"),
           ("fid_inf", "FID_inf", "{:.2f}"), ("kid", "KID", "{:.3f}"), ("is", "IS", "{:.2f}"),
           ("accuracy", "accuracy", "{:.3f}"), ("accuracy_judge2", "acc. judge2", "{:.3f}"),
           ("judge_agreement", "judges agree", "{:.3f}"), ("guide_confidence", "guide_conf", "{:.3f}"),
           ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("classwise_fid", "class-wise FID", "{:.1f}"),
           ("grad_nonfinite_share", "non-finite g", "{:.3f}"), ("wall_s", "wall s", "{:.0f}")]


# shown only when a row has them: the classifier term's options and the network evaluations per sample
OPTIONAL = [("options", "options", "{}"), ("eps_evals", "eps fwd", "{:.0f}"), ("eps_grads", "eps bwd", "{:.0f}"),
            ("clf_grads", "clf fwd+bwd", "{:.0f}")]


def sweep_config_file(run: Path, sweep: Path) -> Path:
    """The config of the last run that drew into this sweep: the newest that extended it (extend_sweep=<it>: its
    grid holds the added points), else the newest written before its sweep.json (the run that made it)."""
    from omegaconf import OmegaConf

    configs = sorted(run.glob("hydra/*/.hydra/config.yaml"), key=lambda p: p.stat().st_mtime)
    extended = [p for p in configs if (x := OmegaConf.load(p).get("extend_sweep")) and Path(x).resolve() == sweep.resolve()]
    if extended:
        return extended[-1]
    made = (sweep / "sweep.json").stat().st_mtime
    return [p for p in configs if p.stat().st_mtime <= made][-1]


def cell(row: dict, key: str, fmt: str) -> str:
    if key == "options":
        return options_label(row)
    v = row.get(key, "") if key != "method" else row.get(key) or "classifier"
    try:
        text = fmt.format(float(v)) if fmt != "{}" else str(v)
    except (TypeError, ValueError):
        return "" if v is None else str(v)
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        text += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return text


def resolve(rows: list[dict], columns: list[tuple]) -> list[tuple]:
    """Columns under the rows' own key names (fid -> fid_judge), titled with the feature space; dropped when absent."""
    out = []
    for key, title, fmt in columns:
        found = key if key in ("method", "scale", "variant", "options", "sampler", "steps") else find_key(rows, key)
        if found:
            out.append((found, title if found == base_name(found) else f"{title} ({found.rsplit('_', 1)[-1]})", fmt))
    return out


# shown only when the rows differ in them (a solver sweep)
SAMPLER = [("sampler", "sampler", "{}"), ("steps", "steps", "{}")]


def table(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda r: (r.get("method") or "classifier", r["variant"], options_label(r),
                                       str(r.get("sampler")), int(r.get("steps") or 0), float(r["scale"])))
    opts = OPTIONAL[:1] if any(options_label(r) != "-" for r in rows) else []
    opts += [c for c in SAMPLER if len({str(r.get(c[0])) for r in rows}) > 1]
    cost = [c for c in OPTIONAL[1:] if any(c[0] in r for r in rows)]
    columns = resolve(rows, COLUMNS[:3] + opts + COLUMNS[3:] + cost)
    lines = ["| " + " | ".join(t for _, t, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    level = next((r["interval_level"] for r in rows if r.get("interval_level")), None)
    note = (f"\n\n[lo, hi]: {100 * level:g} % intervals (basic bootstrap over the generated samples; Wilson for "
            "accuracy). FID is biased upwards at this n; its interval, reflected about it, corrects that to first "
            "order and may lie below the value. FID_inf (extrapolated to n -> inf): from half-samples, point +- z sd "
            "(README, Intervals), where the row has one. Without "
            "metrics.interval_resample_reals the intervals leave out the real side's sampling (KID's can exclude 0)."
            if level else "")
    return "\n".join(lines) + note


def main(run_dir: str, exp_dir: str, sweep_dir: str | None = None) -> None:
    run, exp = Path(run_dir), Path(exp_dir)
    sweep = Path(sweep_dir) if sweep_dir else max((run / "sweep").glob("*/results.csv"),
                                                  key=lambda p: p.stat().st_mtime).parent
    exp.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "results.jsonl", "sweep.json", "evidence.md", "matched.csv", "matched_judge2.csv"):
        if (sweep / name).is_file() or name in ("results.csv", "results.jsonl", "sweep.json"):
            shutil.copy(sweep / name, exp / name)
    for sub in ("plots", "grids", "evidence"):  # evidence/: each point's replicates (the report's source)
        if (sweep / sub).is_dir():
            shutil.copytree(sweep / sub, exp / sub, dirs_exist_ok=True)
    shutil.copy(sweep_config_file(run, sweep), exp / "config.yaml")
    grids = sorted((run / "diffusion" / "samples").glob("step_*.png"))
    eps_grid = exp / "eps_model_samples.png"
    if grids:
        shutil.copy(grids[-1], eps_grid)
    elif eps_grid.exists():  # an earlier export's: this run drew no end-of-training grid
        eps_grid.unlink()
    rows = ResultsFolder(sweep).rows()  # rows from before the feature-space names under today's names
    (exp / "results.md").write_text(table(rows) + "\n")
    print(f"exported {len(rows)} rows from {sweep} to {exp}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
