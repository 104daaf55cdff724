"""Speed table on the current device: training images/s of the eps-model and the noisy classifier,
and sampling ms/step (unguided eps forward + DDIM update; guided adds classifier forward + input
gradient), for the UNet presets tiny, small and bench32.

    python benchmarks/speed.py                 # all presets, default batches
    python benchmarks/speed.py --sizes small --batch 256 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cguide.diffusion import make_plan, make_schedule, sample
from cguide.guidance import ClassifierGuidance, GuidanceSpec
from cguide.nets import build_encoder, build_unet
from where import where, where_line  # benchmarks/where.py: the machine, date, commit and torch of the table

# preset -> (image size, channels): the resolution each preset is meant for
SHAPES = {"tiny": (8, 1), "small": (16, 1), "bench32": (32, 3)}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(model, loss_fn, batch: int, steps: int, device) -> float:
    """Images/s of fwd + bwd + AdamW step, after 2 warm-up steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def ms_per_step(eps_fn, shape, batch: int, plan, device) -> float:
    """Mean over the plan's steps of the second of two runs (the first warms up allocator and caches)."""
    for _ in range(2):
        sync(device)
        start = time.perf_counter()
        sample(eps_fn, shape, plan, range(batch), sampler="ddim", device=device, progress=False)
        sync(device)
    return 1000 * (time.perf_counter() - start) / plan.K


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="tiny,small,bench32")
    ap.add_argument("--batch", type=int, default=None, help="default: 128 (64 for bench32 on CPU)")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--sample-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{where_line(where(device))}; fp32 eager; train = fwd+bwd+AdamW; sampling = DDIM, per step")
    print("| preset | image | UNet params | classifier params | batch | eps-model train img/s | "
          "classifier train img/s | unguided ms/step | guided ms/step | overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        res, ch = SHAPES[size]
        batch = args.batch or (64 if size == "bench32" and device.type == "cpu" else 128)
        torch.manual_seed(0)
        unet, enc = build_unet(size, ch, res).to(device), build_encoder(size, ch, res, 10).to(device)
        x = torch.randn(batch, ch, res, res, device=device)
        t = torch.randint(0, 1000, (batch,), device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        unet_rate = train_rate(unet, lambda m: F.mse_loss(m(x, t), x), batch, args.train_steps, device)
        enc_rate = train_rate(enc, lambda m: F.cross_entropy(m(x, t), y), batch, args.train_steps, device)
        unet.eval()
        plan = make_plan(make_schedule("linear", 1000), args.sample_steps)
        plain = ms_per_step(lambda a, b: unet(a, b), (ch, res, res), batch, plan, device)
        guided_fn = ClassifierGuidance(lambda a, b: unet(a, b), enc, plan, GuidanceSpec.of(y.cpu(), 1.0))
        guided = ms_per_step(guided_fn, (ch, res, res), batch, plan, device)
        print(f"| {size} | {res}x{res}x{ch} | {n_params(unet)/1e6:.2f}M | {n_params(enc)/1e6:.2f}M | {batch} | "
              f"{unet_rate:.0f} | {enc_rate:.0f} | {plain:.1f} | {guided:.1f} | {guided/plain:.2f}x |")


if __name__ == "__main__":
    main()
