"""What intervals cost per sweep point: the bootstrap of every metric (metrics/intervals.py) at n samples,
against the real split of mnist5k (500 images), in the judge's 128-d feature space, time and peak memory.

    python benchmarks/intervals.py                       # n = 250, 1000, 2000; 200 resamples; 1 and 2 threads
    python benchmarks/intervals.py --n 250,2000 --resamples 200,1000

Features are Gaussian stand-ins of the real shapes (the cost depends on shapes only). Each row runs in a fresh
process, so its peak RSS is its own."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from where import where, where_line  # noqa: E402


def one(n: int, resamples: int, threads: int, d: int = 128, m: int = 500, classes: int = 10) -> dict:
    import torch

    from cguide.metrics import MetricSettings
    from cguide.metrics.bootstrap import PointSamples, RealSet
    from cguide.metrics.intervals import row_metrics

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    per = PointSamples(y, torch.ones(n, dtype=torch.bool), correct=torch.rand(n, generator=g) > 0.1,
                       guide_conf=torch.rand(n, generator=g), features=torch.randn(n, d, generator=g),
                       logits=torch.randn(n, classes, generator=g))
    real = RealSet(torch.randn(m, d, generator=g), torch.arange(m) % classes)
    settings = MetricSettings(interval_resamples=resamples)
    values = {"fid": 1.0, "fid_inf": 1.0, "kid_mean": 0.0, "is_mean": 2.0, "precision": 0.5, "recall": 0.5,
              "classwise_fid": 1.0, "accuracy": 0.9, "guide_confidence": 0.5, "nonfinite": 0.0}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    fields, reps = row_metrics(values, {"samples": per, "real": real}, settings)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "resamples": resamples, "threads": threads, "seconds": round(wall, 2),
            "peak_rss_mib": round(peak / 1024), "rss_growth_mib": round((peak - before) / 1024),
            "metrics": len(reps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="250,1000,2000")
    ap.add_argument("--resamples", default="200")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one(*map(int, a.child.split(",")))))
        return
    print(where_line(where("cpu")))
    print("| n per point | resamples | threads | interval time (s) | peak RSS (MiB) | RSS growth (MiB) |")
    print("|---|---|---|---|---|---|")
    for n in map(int, a.n.split(",")):
        for r in map(int, a.resamples.split(",")):
            for t in map(int, a.threads.split(",")):
                out = subprocess.run([sys.executable, __file__, "--child", f"{n},{r},{t}"], capture_output=True,
                                     text=True, check=True).stdout.strip().splitlines()[-1]
                row = json.loads(out)
                print(f"| {row['n']} | {row['resamples']} | {row['threads']} | {row['seconds']} | "
                      f"{row['peak_rss_mib']} | {row['rss_growth_mib']} |", flush=True)


if __name__ == "__main__":
    main()
