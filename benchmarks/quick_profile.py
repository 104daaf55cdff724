"""Where the quick profile's seconds go, per step: each training task's step split into data, forward,
backward, optimizer and EMA, and the sweep's sampling step (eps forward; guided: + classifier forward and
input gradient), at the quick profile's sizes (16x16 mnist5k, `small` nets, train batch 128, sweep batch 500),
under each speed setting that applies (fp32 eager, channels_last, bf16 autocast, torch.compile; settings combine
with +, and compile-eps compiles the sampling step's eps-model only).

    python benchmarks/quick_profile.py                 # all tasks and settings
    python benchmarks/quick_profile.py --settings eager,bf16 --steps 10
    python benchmarks/quick_profile.py --tasks none --settings bf16,bf16+compile-eps --threads 1 --cold-compile

The stage totals of a whole run come from the pipeline's own log ("[stage] trained in N s"); this table
says which part of a step to attack. Times are medians over --steps steps after 3 warm-up steps."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from cguide.data import build_datamodule, DataConfig
from cguide.diffusion import make_schedule, q_sample
from cguide.guidance import classifier_log_prob_grad
from cguide.modules.diffusion import ema_lerp_
from cguide.nets import build_encoder, build_judge, build_unet
from where import where, where_line  # benchmarks/where.py: the machine, date, commit and torch of the tables

SETTINGS = ("eager", "channels_last", "bf16", "compile")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def prepare(net, setting: str, eps: bool = False):
    """net under the setting (settings combine with +): channels_last layout, torch.compile (bf16 is an autocast)."""
    if "channels_last" in setting.split("+"):
        net = net.to(memory_format=torch.channels_last)
    if "compile" in setting.split("+") or (eps and "compile-eps" in setting.split("+")):
        net = torch.compile(net)
    return net


def train_parts(task: str, setting: str, loader, steps: int) -> dict[str, float]:
    """Median seconds per training step of each part."""
    torch.manual_seed(0)
    sched = make_schedule("linear", 1000)
    net = {"diffusion": lambda: build_unet("small", 1, 16), "classifier": lambda: build_encoder("small", 1, 16, 10),
           "judge": lambda: build_judge("small", 1, 16, 10)}[task]()
    ema = AveragedModel(net, multi_avg_fn=partial(ema_lerp_, decay=0.995)) if task == "diffusion" else None
    run = prepare(net, setting)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    it = iter(loader)
    parts: dict[str, list[float]] = {k: [] for k in ("data", "forward", "backward", "optimizer", "ema")}
    for i in range(steps + 3):
        batch = {}
        d = timed(lambda: batch.update(b=next(it)))
        x0, y = batch["b"][0], batch["b"][1]
        if "channels_last" in setting.split("+"):
            x0 = x0.contiguous(memory_format=torch.channels_last)
        loss = {}

        def fwd():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in setting.split("+")):
                if task == "judge":
                    loss["l"] = F.cross_entropy(run(x0).float(), y)
                    return
                t = torch.randint(0, 1000, (x0.shape[0],))
                eps = torch.randn_like(x0)
                xt = q_sample(sched, x0, t, eps)
                out = run(xt, t).float()
                loss["l"] = F.mse_loss(out, eps) if task == "diffusion" else F.cross_entropy(out, y)
        f = timed(fwd)
        opt.zero_grad(set_to_none=True)
        b = timed(lambda: loss["l"].backward())
        o = timed(opt.step)
        e = timed(lambda: ema.update_parameters(net)) if ema is not None else 0.0
        if i >= 3:
            for k, v in zip(parts, (d, f, b, o, e)):
                parts[k].append(v)
    return {k: statistics.median(v) for k, v in parts.items()}


def sample_parts(setting: str, batch: int, steps: int) -> dict[str, float]:
    """Median seconds of one sweep step: the eps forward, and the classifier's forward + input gradient; and
    each one's first call (with torch.compile: the compilation)."""
    torch.manual_seed(0)
    unet, clf = prepare(build_unet("small", 1, 16).eval(), setting, eps=True), build_encoder("small", 1, 16, 10).eval()
    clf = prepare(clf.requires_grad_(False), setting)
    x = torch.randn(batch, 1, 16, 16)
    if "channels_last" in setting.split("+"):
        x = x.contiguous(memory_format=torch.channels_last)
    t, y = torch.full((batch,), 500), torch.arange(batch) % 10
    eps_t, grad_t = [], []
    for i in range(steps + 3):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in setting.split("+")):
            with torch.no_grad():
                e = timed(lambda: unet(x, t))
            g = timed(lambda: classifier_log_prob_grad(clf, x, t, y))
        if i == 0:
            first = {"eps_first": e, "grad_first": g}
        if i >= 3:
            eps_t.append(e)
            grad_t.append(g)
    return {"eps": statistics.median(eps_t), "grad": statistics.median(grad_t), **first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--tasks", default="diffusion,classifier,judge")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sweep-batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cold-compile", action="store_true",
                    help="compile into a fresh inductor cache (what a fresh clone's first run pays)")
    args = ap.parse_args()
    if args.cold_compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    if args.threads:
        torch.set_num_threads(args.threads)
    dm = build_datamodule(DataConfig(name="mnist5k", image_size=16, batch_size=128, num_workers=0))
    dm.setup("fit")
    loader = dm.train_dataloader()

    def batches():
        while True:
            yield from loader
    print(f"{where_line(where('cpu'))}; ms per step, median of {args.steps} after 3 warm-up steps")
    tasks = [t for t in args.tasks.split(",") if t != "none"]
    if tasks:
        print("\n| task | setting | data | forward | backward | optimizer | EMA | step |")
        print("|---|---|---|---|---|---|---|---|")
    for task in tasks:
        for setting in args.settings.split(","):
            p = train_parts(task, setting, batches(), args.steps)
            ms = {k: 1000 * v for k, v in p.items()}
            print(f"| {task} | {setting} | {ms['data']:.1f} | {ms['forward']:.1f} | {ms['backward']:.1f} | "
                  f"{ms['optimizer']:.1f} | {ms['ema']:.1f} | {sum(ms.values()):.1f} |", flush=True)
    print(f"\n| sweep step, batch {args.sweep_batch} | eps forward | classifier fwd + input grad | guided step | "
          "first eps forward | first gradient |")
    print("|---|---|---|---|---|---|")
    for setting in args.settings.split(","):
        p = sample_parts(setting, args.sweep_batch, args.steps)
        print(f"| {setting} | {1000 * p['eps']:.1f} | {1000 * p['grad']:.1f} | {1000 * (p['eps'] + p['grad']):.1f} | "
              f"{1000 * p['eps_first']:.0f} | {1000 * p['grad_first']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
