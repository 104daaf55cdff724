"""Issue #17's side-by-side check: the quick profile before (experiment=mnist5k_quick_prev) and now
(experiment=mnist5k_quick), each trained and swept from scratch on this machine, then one table of wall
time and the quality bar (judge accuracy at s = 0, best accuracy, FID at the best point).

    python benchmarks/quick_vs_prev.py                      # old, then new, then the table (~25 min on 2 cores)
    python benchmarks/quick_vs_prev.py run old              # one run (kept: <root>/old and <root>/old.json)
    python benchmarks/quick_vs_prev.py run trial --experiment mnist5k_quick model.max_steps=600
    python benchmarks/quick_vs_prev.py cross new            # new's s = 0 and best point measured by old's judge
    python benchmarks/quick_vs_prev.py table                # the table of every recorded run

Each run starts the pipeline as `make run` does (a fresh process) into a fresh folder, so nothing is reused;
nothing else should run on the machine meanwhile. "best" is the point with the highest accuracy (ties: lower
FID); the table gives each run's wall time and the pipeline's own split of it (networks until the sweep
starts / the sweep: pipeline_times.json); the bar is issue #17's: wall <= max(8 min, old / 2), accuracy at s = 0 in [0.05, 0.2], best accuracy
>= 0.93, FID at the best point <= the old run's. Each run's metrics come from its own judge (same code and
seed; float32 rounding differs with the thread count it trained under), so `cross` draws a run's s = 0 and
best point again (same networks and seeds: the same samples) and measures them with the old run's judge."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNS = {"old": "mnist5k_quick_prev", "new": "mnist5k_quick"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(root: Path, name: str, experiment: str, overrides: list[str], fresh: bool) -> dict:
    out, record = root / name, root / f"{name}.json"
    if out.exists() and not fresh:
        raise SystemExit(f"{out} exists: a reused stage would not be timed; pass --fresh to delete it first, "
                         f"or pick another run name")
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "cguide.pipeline", f"experiment={experiment}", f"out_dir={out}", *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    from where import where  # benchmarks/where.py: the machine, date, commit (+ uncommitted files) and torch

    w = where("cpu")
    # the pipeline's own stage times: on a machine whose speed drifts, the stage a change touched ranks runs
    # (a checkout before the pipeline wrote them has none)
    times_file = out / "pipeline_times.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    info = {"name": name, "experiment": experiment, "overrides": overrides, "wall_s": round(wall, 1),
            **{k: times[k] for k in ("stages_s", "sweep_s") if k in times},
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": w["commit"], "dirty": w["dirty"],
            "cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "torch": w["torch"], "date": w["date"]}
    record.write_text(json.dumps(info, indent=1))
    print(f"[{name}] {wall:.0f} s", flush=True)
    return info


def cross(root: Path, name: str) -> None:
    """name's s = 0 and best point drawn again from its own networks, measured by old's judge."""
    from omegaconf import OmegaConf

    best = summary(root, json.loads((root / f"{name}.json").read_text()))["best"]
    run_dir, out = root / name, root / f"{name}-old-judge"
    cfg = OmegaConf.load(max((run_dir / "hydra").glob("*/.hydra/config.yaml")))
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "cguide.sweep", f"eps_ckpt={run_dir / 'diffusion/checkpoints/diffusion.ckpt'}",
           f"classifier_ckpt={run_dir / 'classifier/checkpoints/classifier.ckpt'}",
           f"judge_ckpt={root / 'old/judge/checkpoints/judge.ckpt'}", f"data.image_size={cfg.data.image_size}",
           f"sweep.scales=[0,{best['scale']}]", f"sweep.variants=[{best['variant']}]", f"sweep.steps=[{best['steps']}]",
           f"sweep.n_per_point={best['n']}", f"sweep.seed={cfg.sweep.seed}", f"sweep.batch_size={cfg.sweep.batch_size}",
           f"sampler.name={cfg.sampler.name}", f"speed.bf16={str(cfg.speed.bf16).lower()}", f"out_dir={out}",
           "logger.mode=disabled", "progress=false"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def rows_of(out: Path) -> list[dict]:
    files = sorted((out / "sweep").glob("*/results.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no sweep results under {out}/sweep: did the run finish?")
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    for r in rows:  # rows since #26 name FID by its feature space
        r.setdefault("fid", r.get("fid_judge", r.get("fid_inception")))
    return rows


def judge_accuracy(out: Path) -> float:
    """The run's judge on the test split (recorded in its checkpoint): how well the metric's network classifies."""
    from cguide.io.checkpoints import read_checkpoint

    return read_checkpoint(out / "judge" / "checkpoints" / "judge.ckpt")["cguide"]["extra"]["test_acc"]


def summary(root: Path, info: dict) -> dict:
    rows = rows_of(root / info["name"])
    unguided = [r for r in rows if float(r["scale"]) == 0]
    best = max(rows, key=lambda r: (r["accuracy"], -r["fid"]))
    return {**info, "acc0": unguided[0]["accuracy"], "fid0": unguided[0]["fid"], "best": best,
            "judge_acc": judge_accuracy(root / info["name"])}


def table(root: Path) -> None:
    infos = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"), key=lambda p: p.stat().st_mtime)]
    infos = [i for i in infos if "wall_s" in i]
    if not infos:
        raise SystemExit(f"no recorded runs in {root}; run: python benchmarks/quick_vs_prev.py run old")
    s = [summary(root, i) for i in infos]
    for cpu in dict.fromkeys(x["cpu"] for x in s):  # runs on different processors are never compared
        _table(root, [x for x in s if x["cpu"] == cpu])


def _table(root: Path, s: list[dict]) -> None:
    """One processor's runs; the bar compares with the old run measured on that same processor."""
    old = next((x for x in s if x["name"] == "old"), None)
    torches = ", ".join(dict.fromkeys(x.get("torch") or "not recorded" for x in s))
    print(f"\n{s[0]['cpu']}, {s[0]['cores']} cores; runs finished {s[0]['finished']} to {s[-1]['finished']}; "
          f"torch {torches}" + ("" if old else "; no old run on this processor: no bar") + "\n")
    print("| run | experiment | commit | wall | networks / sweep | judge test acc | s = 0 FID / acc | best point | "
          "best FID / acc | bar |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for x in s:
        b = x["best"]
        verdict = "-"
        if old is not None and x is not old:
            limit = max(480.0, old["wall_s"] / 2)
            fails = [f"wall > {limit:.0f} s"] if x["wall_s"] > limit else []
            fails += ["acc at s = 0 not in [0.05, 0.2]"] if not 0.05 <= x["acc0"] <= 0.2 else []
            fails += ["best acc < 0.93"] if b["accuracy"] < 0.93 else []
            fails += [f"FID > {old['best']['fid']:.2f}"] if b["fid"] > old["best"]["fid"] else []
            verdict = "; ".join(fails) or "holds"
        extra = " ".join(x["overrides"])
        commit = x["commit"] + (f" + {len(x['dirty'])} uncommitted file(s)" if x.get("dirty") else "")
        print(f"| {x['name']} | {x['experiment']}{' ' + extra if extra else ''} | {commit} | "
              f"{int(x['wall_s'] // 60)} min "
              f"{x['wall_s'] % 60:.0f} s | {_stages(x)} | {x['judge_acc']:.3f} | {x['fid0']:.2f} / {x['acc0']:.3f} | "
              f"{b['variant']} s = {b['scale']:g} | "
              f"{b['fid']:.2f} / {b['accuracy']:.3f} | {verdict} |")
        judged = root / f"{x['name']}-old-judge" / "results.jsonl"
        if judged.is_file():  # the same samples, measured by old's judge
            r = {float(row["scale"]): row for row in map(json.loads, judged.read_text().splitlines())}
            z, o = r[0.0], r[float(b["scale"])]
            print(f"| {x['name']}, measured by old's judge | (the same samples) | {x['commit']} | - | - | "
                  f"{old['judge_acc']:.3f} | {z['fid']:.2f} / "
                  f"{z['accuracy']:.3f} | {b['variant']} s = {b['scale']:g} | {o['fid']:.2f} / {o['accuracy']:.3f} | "
                  f"{'holds' if o['fid'] <= old['best']['fid'] and o['accuracy'] >= 0.93 else 'fails'} |")


def _stages(x: dict) -> str:
    """Networks (until the sweep starts) / sweep, in s; runs recorded before the pipeline wrote its times have none."""
    return f"{x['stages_s']:.0f} / {x['sweep_s']:.0f} s" if "sweep_s" in x else "not recorded"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("outputs/bench_quick"))
    ap.add_argument("--fresh", action="store_true", help="delete an existing run folder of the same name first")
    sub = ap.add_subparsers(dest="cmd")
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("--experiment", default=None, help="default: old -> mnist5k_quick_prev, else mnist5k_quick")
    r.add_argument("overrides", nargs="*")
    c = sub.add_parser("cross")
    c.add_argument("name", nargs="?", default="new")
    sub.add_parser("table")
    # overrides may follow --experiment (argparse leaves them over)
    args, extra = ap.parse_known_args()
    if extra and (args.cmd != "run" or any("=" not in x for x in extra)):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.cmd == "run":
        args.overrides += extra
    args.root.mkdir(parents=True, exist_ok=True)
    if args.cmd == "run":
        run(args.root, args.name, args.experiment or RUNS.get(args.name, "mnist5k_quick"), args.overrides, args.fresh)
    elif args.cmd == "cross":
        cross(args.root, args.name)
    elif args.cmd is None:
        for name, experiment in RUNS.items():
            run(args.root, name, experiment, [], args.fresh)
        cross(args.root, "new")
    table(args.root)


if __name__ == "__main__":
    main()
