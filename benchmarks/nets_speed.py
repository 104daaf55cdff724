"""Training throughput of the net presets on CPU: fwd + bwd + AdamW step, images/s.

    python benchmarks/nets_speed.py --size small --image-size 16 --in-channels 1 --batch 128
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cguide.nets.sizes import build_encoder, build_unet


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def train_rate(model: torch.nn.Module, loss_fn, batch: int, steps: int, warmup: int) -> tuple[float, float]:
    """(wall images/s, CPU-time images/s per thread).

    The second is what the wall rate would be with the threads to ourselves: on a shared machine
    the wall rate falls with other people's load, CPU time much less.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            wall, cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return batch * steps / wall, batch * steps * torch.get_num_threads() / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="small")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", default="unet,encoder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, c, s = args.batch, args.in_channels, args.image_size
    x = torch.randn(b, c, s, s)
    t = torch.randint(0, 1000, (b,))
    y = torch.randint(0, args.num_classes, (b,))

    print(f"batch {b}, {s}x{s}x{c}, {args.threads} threads, fwd+bwd+AdamW; "
          f"cpu-time rate = images per CPU-second x threads")
    print("| net | size | params | wall images/s | cpu-time images/s |")
    print("|---|---|---|---|---|")
    for net in args.nets.split(","):
        if net == "unet":
            model = build_unet(args.size, c, s)
            loss = lambda m: F.mse_loss(m(x, t), x)  # noqa: E731
        else:
            model = build_encoder(args.size, c, s, args.num_classes)
            loss = lambda m: F.cross_entropy(m(x, t), y)  # noqa: E731
        wall, cpu = train_rate(model, loss, b, args.steps, args.warmup)
        print(f"| {net} | {args.size} | {n_params(model):,} | {wall:.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
