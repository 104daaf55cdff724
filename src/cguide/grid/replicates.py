"""Training-seed replicates: one report over sweeps that differ only in the networks' training seed.

Each replicate is a whole pipeline run (eps-model, classifier and judge trained with its own `seed`), e.g.

    for s in 0 1 2; do python -m cguide.pipeline experiment=mnist5k_quick seed=$s out_dir=outputs/pipeline/quick_s$s; done
    python -m cguide.grid.replicates outputs/replicates/quick outputs/pipeline/quick_s{0,1,2}/sweep/*

Per point and metric the report gives the mean over seeds with a t interval (n - 1 degrees of freedom: the
spread that only replicates measure, a different float path or seed trains a different model) next to the
mean sampling interval of one seed (the bootstrap's): when the first is wider, more samples per point cannot
settle a comparison, more seeds can. The same for each series' metrics at matched accuracy, and every pair of
series compared seed by seed there (the difference within each seed, whose networks both series share, then its t
interval over seeds: the comparison a reviewer asks for). Folders whose settings differ in anything but the
checkpoints are refused: that would average different experiments.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

from scipy import stats

from ..io.atomic import atomic_write_text
from ..metrics.intervals import base_name
from ..metrics.registry import value_bounds
from .evidence import is_far, matched_table
from .plots import num
from .results import MANIFEST, ResultsFolder, read_manifest

CKPT_KEYS = ("eps_ckpt", "cond_ckpt", "classifier_ckpt", "judge_ckpt", "guide_ckpt", "judge2_ckpt")
METRICS = ("fid_judge", "fid_inf_judge", "kid_judge", "accuracy", "accuracy_judge2", "judge_agreement", "is_judge",
           "precision_judge", "recall_judge", "guide_confidence", "fid_inception", "fid_inf_inception", "is_inception")


def check_same_settings(folders: list[Path]) -> None:
    """Every folder's sweep.json equal but for the checkpoints, or one line naming the folders and keys."""
    if len(folders) < 2:
        raise ValueError(f"replicates need at least 2 sweep folders, got {len(folders)}; pass one per training seed")
    records = []
    for f in folders:
        path = Path(f) / MANIFEST
        if not path.is_file():
            raise ValueError(f"{f} is not a sweep folder (no {MANIFEST}); pass <run>/sweep/<id> folders")
        records.append({k: v for k, v in read_manifest(path).get("defines", {}).items() if k not in CKPT_KEYS})
    for f, r in zip(folders[1:], records[1:]):
        if r != records[0]:
            keys = sorted(k for k in set(r) | set(records[0]) if r.get(k) != records[0].get(k))
            raise ValueError(f"sweep folders {folders[0]} and {f} differ in {', '.join(keys)}: replicates must share "
                             "every setting but the training seed (their checkpoints); report them apart")


def t_interval(values: list[float], level: float,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float, float]:
    """(mean, lo, hi) of the mean over replicates, Student's t with n - 1 degrees of freedom, clamped to where
    the metric's values lie (a mean of proportions is one: its t interval must not cross 0 or 1)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if len(v) < 2:
        return (v[0] if v else math.nan), math.nan, math.nan
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * sd / math.sqrt(len(v))
    low, high = bounds
    return mean, min(max(mean - half, low), high), min(max(mean + half, low), high)


# metrics compared pair by pair across seeds at matched accuracy (lower or higher is better for each)
PAIRED = ("fid_judge", "fid_inception", "kid_judge", "precision_judge", "recall_judge")


def verdict(a: str, b: str, metric: str, lo: float, hi: float, pct: str) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "too few seeds"
    if lo <= 0 <= hi:
        return "not separated"
    return f"{a} {'higher' if lo > 0 else 'lower'} {metric} than {b} ({pct} interval of the difference excludes 0)"


def paired_across_seeds(matched: dict[tuple, dict], level: float, far: dict[tuple, set] | None = None) -> list[dict]:
    """Each pair of series at each target and PAIRED metric: the per-seed differences' mean and t interval, over
    the seeds where both reach the target. far: (series, target) -> the seeds whose matched value is interpolated
    far from every drawn point (evidence.is_far); a separated verdict says in how many of its seeds either side is."""
    far = far or {}
    out = []
    pct = f"{100 * level:g} %"
    keys = sorted({(t, k) for (_, t, k) in matched if k in PAIRED})
    names = sorted({s for (s, _, _) in matched})
    for t, k in keys:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                va, vb = matched.get((a, t, k), {}), matched.get((b, t, k), {})
                seeds = [j for j in va if j in vb and math.isfinite(va[j]) and math.isfinite(vb[j])]
                if not seeds:
                    continue
                mean, lo, hi = t_interval([va[j] - vb[j] for j in seeds], level)
                n_far = len(set(seeds) & (far.get((a, t), set()) | far.get((b, t), set())))
                text = verdict(a, b, k, lo, hi, pct)
                if n_far and not text.startswith(("not separated", "too few")):
                    text += (f"; in {n_far} of its {len(seeds)} seeds a side is interpolated far from a drawn point "
                             "(the grid may decide this)")
                out.append({"target": t, "metric": k, "a": a, "b": b, "seeds": len(seeds), "mean": mean, "lo": lo,
                            "hi": hi, "far_seeds": n_far, "verdict": text})
    return out


def aggregate(folders: list[Path], level: float = 0.95) -> tuple[list[dict], list[dict]]:
    """(point rows, matched rows): per point/series and metric, the mean over seeds with its t interval and
    the mean width of one seed's sampling interval."""
    points, rows, _ = _aggregate(folders, level)
    return points, rows


def _aggregate(folders: list[Path], level: float) -> tuple[list[dict], list[dict], list[dict]]:
    folders = [Path(f) for f in folders]
    check_same_settings(folders)
    per = [{r["point"]: r for r in ResultsFolder(f).rows()} for f in folders]
    common = [k for k in per[0] if all(k in p for p in per[1:])]
    points = []
    for key in common:
        out = {"point": key, **{a: per[0][key].get(a) for a in ("method", "variant", "scale", "sampler", "steps")},
               "seeds": len(folders)}
        for m in METRICS:
            vals = [num(p[key].get(m)) for p in per]
            if all(math.isnan(v) for v in vals):
                continue
            out[m], out[f"{m}_lo"], out[f"{m}_hi"] = t_interval(vals, level, value_bounds(base_name(m)))
            widths = [num(p[key].get(f"{m}_hi")) - num(p[key].get(f"{m}_lo")) for p in per]
            out[f"{m}_sampling_width"] = sum(widths) / len(widths)
        points.append(out)
    matched: dict[tuple, list] = {}
    by_seed: dict[tuple, dict] = {}  # (series, target, metric) -> {folder index: value}
    far: dict[tuple, set] = {}  # (series, target) -> folder indices interpolated far from every drawn point
    for j, f in enumerate(folders):
        for e in matched_table(ResultsFolder(f).rows(), f):
            if is_far(e):
                far.setdefault((e["series"], e["target"]), set()).add(j)
            for k, (v, lo, hi) in e["values"].items():
                matched.setdefault((e["series"], e["target"], k), []).append((v, hi - lo))
                by_seed.setdefault((e["series"], e["target"], k), {})[j] = v
    rows = []
    for (series_, target, k), vs in matched.items():
        mean, lo, hi = t_interval([v for v, _ in vs], level, value_bounds(base_name(k)))
        widths = [w for _, w in vs if math.isfinite(w)]
        rows.append({"series": series_, "target": target, "metric": k, "seeds": sum(math.isfinite(v) for v, _ in vs),
                     "mean": mean, "lo": lo, "hi": hi,
                     "sampling_width": sum(widths) / len(widths) if widths else math.nan})
    return points, rows, paired_across_seeds(by_seed, level, far)


def _f(v) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3g}"


def write(out: str | Path, folders: list[Path], level: float = 0.95) -> Path:
    out = Path(out)
    points, matched, paired = _aggregate(folders, level)
    pct = f"{100 * level:g} %"
    lines = [f"# Training-seed replicates ({len(folders)} seeds; {pct} t intervals of the mean)", "",
             "Sweeps: " + ", ".join(str(f) for f in folders), "",
             "'sampling': the mean width of one seed's bootstrap interval (samples only); 'seeds': the t interval of",
             "the mean over training seeds (each seed trained its own networks, judge included). Generated by",
             "cguide.grid.replicates: do not edit.", "",
             "| point | metric | mean over seeds [interval] | one seed's sampling width |", "|---|---|---|---|"]
    for p in points:
        for m in METRICS:
            if m in p:
                lines.append(f"| {p['point']} | {m} | {_f(p[m])} [{_f(p[f'{m}_lo'])}, {_f(p[f'{m}_hi'])}] | "
                             f"{_f(p[f'{m}_sampling_width'])} |")
    if matched:
        lines += ["", "## At matched judge accuracy", "", "| series | target acc | metric | mean over seeds "
                  "[interval] | one seed's sampling width | seeds reaching it |", "|---|---|---|---|---|---|"]
        for r in matched:
            lines.append(f"| {r['series']} | {r['target']:g} | {r['metric']} | {_f(r['mean'])} [{_f(r['lo'])}, "
                         f"{_f(r['hi'])}] | {_f(r['sampling_width'])} | {r['seeds']} |")
    if paired:
        lines += ["", "## Series against series at matched accuracy, seed by seed", "",
                  "The difference A - B within each training seed, then its mean over the seeds where both reach the",
                  f"target, with its {pct} t interval.", "",
                  "| target acc | metric | A - B | mean [interval] | seeds | verdict |", "|---|---|---|---|---|---|"]
        for r in paired:
            lines.append(f"| {r['target']:g} | {r['metric']} | {r['a']} - {r['b']} | {_f(r['mean'])} [{_f(r['lo'])}, "
                         f"{_f(r['hi'])}] | {r['seeds']} | {r['verdict']} |")
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    if points:
        writer = csv.DictWriter(buf, list(dict.fromkeys(k for p in points for k in p)), lineterminator="\n")
        writer.writeheader()
        writer.writerows(points)
    atomic_write_text(out / "replicates.csv", buf.getvalue())
    return atomic_write_text(out / "replicates.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        raise SystemExit("usage: python -m cguide.grid.replicates <report dir> <sweep dir> <sweep dir> [...]")
    try:
        path = write(args[0], [Path(a) for a in args[1:]])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(path.read_text())


if __name__ == "__main__":
    main()
