"""Issue #17's side-by-side check: the quick profile before (experiment=mnist5k_quick_prev) and now
(experiment=mnist5k_quick), each trained and swept from scratch on this machine, then one table of wall
time and the quality bar (judge accuracy at s = 0, best accuracy, FID at the best point).

    python benchmarks/quick_vs_prev.py                      # old, then new, then the table (~25 min on 2 cores)
    python benchmarks/quick_vs_prev.py run old              # one run (kept: <root>/old and <root>/old.json)
    python benchmarks/quick_vs_prev.py run trial --experiment mnist5k_quick model.max_steps=600
    python benchmarks/quick_vs_prev.py table                # the table of every recorded run

Each run starts the pipeline as `make run` does (a fresh process) into a fresh folder, so nothing is reused;
nothing else should run on the machine meanwhile. "best" is the point with the highest accuracy (ties: lower
FID); the bar is issue #17's: wall <= max(8 min, old / 2), accuracy at s = 0 in [0.05, 0.2], best accuracy
>= 0.93, FID at the best point <= the old run's."""

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
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = {"name": name, "experiment": experiment, "overrides": overrides, "wall_s": round(wall, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit, "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0))}
    record.write_text(json.dumps(info, indent=1))
    print(f"[{name}] {wall:.0f} s", flush=True)
    return info


def rows_of(out: Path) -> list[dict]:
    files = sorted((out / "sweep").glob("*/results.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no sweep results under {out}/sweep: did the run finish?")
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def summary(root: Path, info: dict) -> dict:
    rows = rows_of(root / info["name"])
    unguided = [r for r in rows if float(r["scale"]) == 0]
    best = max(rows, key=lambda r: (r["accuracy"], -r["fid"]))
    return {**info, "acc0": unguided[0]["accuracy"], "fid0": unguided[0]["fid"], "best": best}


def table(root: Path) -> None:
    infos = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"), key=lambda p: p.stat().st_mtime)]
    if not infos:
        raise SystemExit(f"no recorded runs in {root}; run: python benchmarks/quick_vs_prev.py run old")
    s = [summary(root, i) for i in infos]
    old = next((x for x in s if x["name"] == "old"), None)
    print(f"\n{s[0]['cpu']}, {s[0]['cores']} cores\n")
    print("| run | experiment | wall | s = 0 FID / acc | best point | best FID / acc | bar |")
    print("|---|---|---|---|---|---|---|")
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
        print(f"| {x['name']} | {x['experiment']}{' ' + extra if extra else ''} | {int(x['wall_s'] // 60)} min "
              f"{x['wall_s'] % 60:.0f} s | {x['fid0']:.2f} / {x['acc0']:.3f} | {b['variant']} s = {b['scale']:g} | "
              f"{b['fid']:.2f} / {b['accuracy']:.3f} | {verdict} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("outputs/bench_quick"))
    ap.add_argument("--fresh", action="store_true", help="delete an existing run folder of the same name first")
    sub = ap.add_subparsers(dest="cmd")
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("--experiment", default=None, help="default: old -> mnist5k_quick_prev, else mnist5k_quick")
    r.add_argument("overrides", nargs="*")
    sub.add_parser("table")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if args.cmd == "run":
        run(args.root, args.name, args.experiment or RUNS.get(args.name, "mnist5k_quick"), args.overrides, args.fresh)
    elif args.cmd is None:
        for name, experiment in RUNS.items():
            run(args.root, name, experiment, [], args.fresh)
    table(args.root)


if __name__ == "__main__":
    main()
