"""Sweep plots (matplotlib, Agg) from the result rows: metric vs guidance scale, one line per series
(variant, and sampler/steps/interval where the sweep varies them), and the FID-accuracy trade-off."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in multirun jobs
import matplotlib.pyplot as plt  # noqa: E402

from ..io.atomic import atomic_write  # noqa: E402

SERIES_AXES = ("variant", "sampler", "steps", "t_lo", "t_hi")
# file stem -> (title, [(row key, legend suffix)]); a plot is skipped when none of its keys was measured
VS_SCALE = {
    "fid_vs_scale": ("FID", [("fid", "")]),
    "accuracy_vs_scale": ("judge accuracy on target class", [("accuracy", "")]),
    "is_vs_scale": ("Inception score (extractor logits)", [("is_mean", "")]),
    "precision_recall_vs_scale": ("precision (solid) and recall (dashed)", [("precision", " precision"),
                                                                            ("recall", " recall")]),
}


def num(v) -> float:
    return math.nan if v is None else float(v)


def series(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by line label, each sorted by scale; the label names only the axes that vary."""
    varying = [a for a in SERIES_AXES if len({str(r.get(a)) for r in rows}) > 1] or ["variant"]
    out: dict[str, list[dict]] = {}
    for r in rows:
        label = " ".join(f"{r.get(a)}" if a == "variant" else f"{a}={r.get(a)}" for a in varying)
        out.setdefault(label, []).append(r)
    return {k: sorted(v, key=lambda r: num(r["scale"])) for k, v in out.items()}


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def plot_vs_scale(rows: list[dict], title: str, keys: list[tuple[str, str]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (label, rs) in enumerate(series(rows).items()):
        for j, (key, suffix) in enumerate(keys):
            ax.plot([num(r["scale"]) for r in rs], [num(r.get(key)) for r in rs], marker="o", color=f"C{i}",
                    linestyle="-" if j == 0 else "--", label=label + suffix)
    ax.set(xlabel="guidance scale s", ylabel=title, title=f"{title} vs s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_tradeoff(rows: list[dict], path: Path) -> Path:
    """FID against accuracy, points joined in order of s and labelled with it."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (label, rs) in enumerate(series(rows).items()):
        xs, ys = [num(r.get("accuracy")) for r in rs], [num(r.get("fid")) for r in rs]
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=label)
        for r, x, y in zip(rs, xs, ys):
            ax.annotate(f"s={num(r['scale']):g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="judge accuracy", ylabel="FID", title="FID vs accuracy trade-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_plots(rows: list[dict], out_dir: str | Path) -> dict[str, Path]:
    """All plots whose metrics are in the rows, as <out_dir>/<name>.png; returns {name: path}."""
    out_dir = Path(out_dir)
    if not rows:
        return {}
    have = {k for r in rows for k in r}
    paths = {}
    for name, (title, keys) in VS_SCALE.items():
        if any(k in have for k, _ in keys):
            paths[name] = plot_vs_scale(rows, title, keys, out_dir / f"{name}.png")
    if {"fid", "accuracy"} <= have:
        paths["fid_vs_accuracy"] = plot_tradeoff(rows, out_dir / "fid_vs_accuracy.png")
    return paths
