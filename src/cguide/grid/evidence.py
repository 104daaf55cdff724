"""A sweep's evidence report (<sweep>/evidence.md, matched.csv, plots/*_at_matched_accuracy.png): each series'
metrics at matched judge accuracy with intervals, and every pair of series compared there by a paired bootstrap
of the difference, with a verdict in words ("not separated" when the interval holds 0).

It reads only what the sweep wrote: the rows and each point's replicates (evidence_store.py). Series are the
plots' lines (method, variant, sampler, steps, options), each ordered by scale.

With a second judge (#26 item 6: rows with accuracy_judge2) the report also lists, per point, both judges'
accuracies and their agreement, and the same matched table at the second judge's accuracy (matched_judge2.csv,
plots/*_at_matched_accuracy_judge2.png): a method that fools the judge reaches a target there at another scale.

    python -m cguide.grid.evidence <sweep_dir> [0.9,0.95,0.975]
"""

from __future__ import annotations

import csv
import io
import math
import sys
from itertools import combinations
from pathlib import Path

import torch

from ..io.atomic import atomic_write_text
from ..metrics.bootstrap import basic_interval, paired_difference
from ..metrics.intervals import base_name, find_key
from ..metrics.registry import lower_is_better
from ..metrics.matched import at_accuracy, check_targets, crossing
from .evidence_store import read_evidence
from .plots import _save, num, plt, series
from .results import ResultsFolder

DEFAULT_TARGETS = (0.90, 0.95, 0.975)
MATCHED = ("fid", "fid_inf", "kid", "is", "precision", "recall", "classwise_fid")  # metrics reported at a*


def _curve(rs: list[dict], evidence: dict, acc_key: str, key: str):
    """(point values [K], replicates [B, K]) of `key` along a series; None when a point has no replicates."""
    reps, vals = [], []
    for r in rs:
        ev = evidence.get(r["point"])
        if ev is None or key not in ev["replicates"] or acc_key not in ev["replicates"] or r.get(key) is None:
            return None
        reps.append(ev["replicates"][key].double())
        vals.append(num(r[key]))
    return torch.tensor(vals, dtype=torch.float64), torch.stack(reps, -1)


JUDGES = ("accuracy", "accuracy_judge2", "judge_agreement")  # the per-point table of both judges


def matched_table(rows: list[dict], out: Path, targets=DEFAULT_TARGETS, acc_key: str = "accuracy") -> list[dict]:
    """One entry per (series, target): point value and interval of each metric at the target accuracy, the
    scale there, and the share of replicates whose curve reaches the target. acc_key: whose accuracy is matched
    ('accuracy', the judge's; 'accuracy_judge2', the second judge's)."""
    targets = check_targets(targets)
    keys = [k for k in (find_key(rows, m) for m in MATCHED) if k]
    level = next((r["interval_level"] for r in rows if r.get("interval_level")), 0.95)
    evidence = {r["point"]: read_evidence(out, r["point"]) for r in rows}
    ids = {ev["resample_id"] for ev in evidence.values() if ev is not None}
    if len(ids) > 1:
        raise ValueError(f"{out}: the points hold replicates of {len(ids)} different resamplings (other seeds, targets "
                         "or metrics.interval_resamples); they cannot be compared pair by pair: draw them again")
    entries = []
    for label, rs in series(rows).items():
        acc = _curve(rs, evidence, acc_key, acc_key)
        if acc is None or len(rs) < 2:
            continue
        scales = torch.tensor([num(r["scale"]) for r in rs], dtype=torch.float64)
        for t in targets:
            e = {"series": label, "target": t, "acc_range": (acc[0].min().item(), acc[0].max().item()),
                 "level": level, "values": {}, "replicates": {}, "bracket": _bracket(rs, acc[0], acc_key, t)}
            e["scale"] = at_accuracy(acc[0], scales, t).item()
            for key in keys:
                curve = _curve(rs, evidence, acc_key, key)
                if curve is None:
                    continue
                point = at_accuracy(acc[0], curve[0], t).item()
                reps = at_accuracy(acc[1], curve[1], t)
                e["reached"] = torch.isfinite(reps).double().mean().item()
                lo, hi = basic_interval(point, reps, level) if math.isfinite(point) else (math.nan, math.nan)
                e["values"][key], e["replicates"][key] = (point, lo, hi), reps
            entries.append(e)
    return entries


def _bracket(rs: list[dict], acc: torch.Tensor, acc_key: str, target: float) -> dict | None:
    """The points a matched value rests on: their scales and accuracies, and the nearest whose accuracy interval
    holds the target (None: the value is an interpolation between points that all miss it)."""
    ks = crossing(acc, target)
    if ks is None:
        return None
    pts = [(num(rs[k]["scale"]), acc[k].item(), num(rs[k].get(f"{acc_key}_lo")), num(rs[k].get(f"{acc_key}_hi")))
           for k in dict.fromkeys(ks)]
    near = [p for p in pts if p[2] <= target <= p[3]]
    return {"points": [(s, a) for s, a, _, _ in pts],
            "near": min(near, key=lambda p: abs(p[1] - target))[0] if near else None}


def is_far(e: dict) -> bool:
    """A matched value interpolated between points none of which is near the target (in its accuracy interval)."""
    return e.get("bracket") is not None and e["bracket"]["near"] is None


def comparisons(entries: list[dict]) -> list[dict]:
    """Every pair of series at each target, for each metric both have there: the paired difference."""
    out = []
    by_target: dict[float, list[dict]] = {}
    for e in entries:
        by_target.setdefault(e["target"], []).append(e)
    for t, es in by_target.items():
        for a, b in combinations(es, 2):
            for key in a["values"]:
                if key not in b["values"]:
                    continue
                va, vb = a["values"][key][0], b["values"][key][0]
                if not (math.isfinite(va) and math.isfinite(vb)):
                    continue
                ra, rb = a["replicates"][key], b["replicates"][key]
                both = torch.isfinite(ra) & torch.isfinite(rb)
                d = paired_difference(a["series"], b["series"], key, va, vb, ra[both], rb[both], a["level"])
                out.append({"target": t, "diff": d, "lower_better": lower_is_better(base_name(key)),
                            "far": [e["series"] for e in (a, b) if is_far(e)]})
    return out


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(v) else f"{v:.{digits}g}"


def _keys(entries: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for e in entries for k in e["values"]))


def _matched_lines(entries: list[dict], second: bool = False) -> tuple[list[str], str]:
    """The matched table (markdown lines: its header row on, and the paired differences) and its CSV text;
    second: matched at the second judge's accuracy."""
    keys = _keys(entries)
    pct = f"{100 * entries[0]['level']:g} %"
    lines = [f"| series | target acc{' (judge2)' if second else ''} | scale | " + " | ".join(keys)
             + " | reached | drawn points (s: accuracy) | near a point |", "|" + "---|" * (len(keys) + 6)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["series", "target", "scale", *[f"{k}{s}" for k in keys for s in ("", "_lo", "_hi")], "reached",
                     "bracket", "near_scale"])
    for e in entries:
        cells = []
        for k in keys:
            v, lo, hi = e["values"].get(k, (math.nan,) * 3)
            cells.append("-" if not math.isfinite(v) else f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]")
        if not math.isfinite(e["scale"]):
            a0, a1 = e["acc_range"]
            cells = [f"outside its range [{a0:.3f}, {a1:.3f}]"] + ["-"] * (len(keys) - 1)
        b = e.get("bracket")
        drawn = "-" if b is None else " / ".join(f"{s:g}: {a:.3f}" for s, a in b["points"])
        near = "-" if b is None else ("no" if b["near"] is None else f"s = {b['near']:g}")
        lines.append(f"| {e['series']} | {e['target']:g} | {_fmt(e['scale'])} | " + " | ".join(cells)
                     + f" | {e.get('reached', math.nan):.2f} | {drawn} | {near} |")
        writer.writerow([e["series"], e["target"], e["scale"],
                         *[x for k in keys for x in e["values"].get(k, (math.nan,) * 3)], e.get("reached"),
                         "" if b is None else " ".join(f"{s:g}:{a:.4f}" for s, a in b["points"]),
                         "" if b is None or b["near"] is None else b["near"]])
    pairs = comparisons(entries)
    if pairs:
        whose = " of the second judge" if second else ""
        lines += ["", f"## Paired differences at matched accuracy{whose} ({pct} intervals of the difference)", ""]
        for p in pairs:
            caveat = ""
            if p["diff"].separated and p["far"]:
                caveat = (f" (interpolated far from a drawn point for {' and '.join(p['far'])}: the grid may decide "
                          "this; draw a scale nearer the target)")
            lines.append(f"- acc {p['target']:g}: {p['diff'].verdict()}{caveat}")
    return lines, buf.getvalue()


def judges_lines(rows: list[dict]) -> list[str]:
    """Per point, both judges' accuracies and their agreement with Wilson intervals ([] without a second judge)."""
    if not any(r.get("accuracy_judge2") is not None for r in rows):
        return []
    level = next((r["interval_level"] for r in rows if r.get("interval_level")), 0.95)
    lines = ["", f"## Both judges, per point ({100 * level:g} % Wilson intervals)", "",
             "accuracy: the judge's (a ResNet); accuracy_judge2: the second judge's (a plain CNN, another seed);",
             "judge_agreement: the share of finite samples on which both name the same class, whatever the target.",
             "Guidance that fools only the judge would lift accuracy above accuracy_judge2 as the scale grows.", "",
             "| series | scale | " + " | ".join(JUDGES) + " |", "|" + "---|" * (len(JUDGES) + 2)]
    for label, rs in series(rows).items():
        for r in rs:
            cells = []
            for k in JUDGES:
                v, lo, hi = (num(r.get(x)) for x in (k, f"{k}_lo", f"{k}_hi"))
                cells.append("-" if not math.isfinite(v) else f"{v:.3f} [{_fmt(lo)}, {_fmt(hi)}]")
            lines.append(f"| {label} | {num(r['scale']):g} | " + " | ".join(cells) + " |")
    return lines


def write_report(out: str | Path, targets=DEFAULT_TARGETS) -> Path | None:
    """evidence.md + matched.csv + the matched-accuracy plots of a sweep folder; None when it has no replicates.
    With a second judge also its per-point table and matched_judge2.csv (the table at its accuracy)."""
    out = Path(out)
    rows = ResultsFolder(out).rows()
    entries = matched_table(rows, out, targets)
    if not entries:
        return None
    level = entries[0]["level"]
    pct = f"{100 * level:g} %"
    lines = [f"# Evidence: metrics at matched judge accuracy ({pct} intervals)", "",
             "Each series' value where its scale curve first reaches the target accuracy (linear in accuracy between",
             "the two points that bracket it), computed inside every bootstrap replicate: [lo, hi] is the basic",
             "bootstrap interval over the generated samples (for FID it corrects the small-n bias to first order and",
             "may lie below the value).",
             "The interpolation's own error is not in [lo, hi]: 'drawn points' are the two the value rests on, and",
             "'near a point' names one whose accuracy interval holds the target ('no': an interpolation between",
             "points that all miss it; a separated difference resting on one is marked, as the grid may decide it).",
             "'reached': share of replicates whose curve reaches the target. Generated by cguide.grid.evidence",
             "from results.jsonl and evidence/*.pt: do not edit.", ""]
    table, text = _matched_lines(entries)
    lines += table
    atomic_write_text(out / "matched.csv", text)
    plot_matched(entries, _keys(entries), out / "plots")
    lines += judges_lines(rows)
    second = matched_table(rows, out, targets, acc_key="accuracy_judge2") \
        if any(r.get("accuracy_judge2") is not None for r in rows) else []
    if second:
        lines += ["", f"## Metrics at matched accuracy of the second judge ({pct} intervals)", "",
                  "The same table with the targets on the second judge's accuracy (accuracy_judge2).", ""]
        table, text = _matched_lines(second, second=True)
        lines += table
        atomic_write_text(out / "matched_judge2.csv", text)
        plot_matched(second, _keys(second), out / "plots", judge="judge2")
    return atomic_write_text(out / "evidence.md", "\n".join(lines) + "\n")


def plot_matched(entries: list[dict], keys: list[str], plots: Path, judge: str = "judge") -> dict[str, Path]:
    """Per metric: its value at each target accuracy (of `judge`: judge or judge2), one line per series, interval
    bars."""
    paths = {}
    labels = list(dict.fromkeys(e["series"] for e in entries))
    for key in [k for k in keys if base_name(k) == "fid"]:  # the headline metric
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for i, label in enumerate(labels):
            es = [e for e in entries if e["series"] == label and key in e["values"]]
            xs = [e["target"] for e in es]
            v = [e["values"][key] for e in es]
            ys = [p[0] for p in v]
            err = [[max(0.0, y - lo) if math.isfinite(lo) else 0.0 for y, (_, lo, _) in zip(ys, v)],
                   [max(0.0, hi - y) if math.isfinite(hi) else 0.0 for y, (_, _, hi) in zip(ys, v)]]
            ax.errorbar([x + 0.001 * (i - len(labels) / 2) for x in xs], ys, yerr=err, marker="o", capsize=3,
                        color=f"C{i}", label=label)
        space = key.rsplit("_", 1)[-1]
        ax.set(xlabel=f"target {judge} accuracy", ylabel=f"{base_name(key)} ({space} features)",
               title=f"{base_name(key)} at matched accuracy\n(bars: {100 * entries[0]['level']:g} % intervals)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        plots.mkdir(parents=True, exist_ok=True)
        suffix = "" if judge == "judge" else f"_{judge}"
        paths[key] = _save(fig, plots / f"{base_name(key)}_at_matched_accuracy{suffix}.png")
    return paths


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m cguide.grid.evidence <sweep_dir> [0.9,0.95,0.975]")
    targets = [float(t) for t in args[1].split(",")] if len(args) > 1 else DEFAULT_TARGETS
    path = write_report(args[0], targets)
    print(path.read_text() if path else f"{args[0]}: no point has bootstrap replicates (evidence/*.pt)")


if __name__ == "__main__":
    main()
