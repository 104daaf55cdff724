"""Guided-step speed per speed option (cguide.runtime.speed), through the production path (cguide.runtime.draw),
with each option's guided samples checked against eager fp32 ones (max abs diff), and training images/s.

    python benchmarks/guided_step.py                          # GPU: bench32 at batch 256 and small, all options
    python benchmarks/guided_step.py --configs tiny,small --batch 32 --steps 5 --threads 2   # CPU
    python benchmarks/guided_step.py --options eager --method-options eager,all     # + every guidance method

Networks are freshly initialised (zero-initialised output layers get small random weights, so the
classifier gradient is not zero); speed does not depend on the weights. ms/step is the mean over a
timed run of --steps DDIM steps after one warm-up run (compilation and cuDNN choices happen there);
a CUDA-graph run captures once per batch inside the timed run, as it would in a sweep. x_0 is clipped
at each step, as in the sample and sweep configs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cguide.diffusion import SamplerSpec, make_schedule
from cguide.guidance import GuidanceSpec
from cguide.io.checkpoints import Loaded
from cguide.nets import build_encoder, build_unet
from cguide.runtime.draw import Models, RunOptions, draw
from cguide.runtime.speed import SpeedOptions

SHAPES = {"tiny": (8, 1), "small": (16, 1), "bench32": (32, 3), "cifar": (32, 3)}  # preset -> (image size, channels)
OPTIONS = {  # the order of the table; on a GPU the likely fastest come early
    "eager": SpeedOptions(),
    "cuda_graph": SpeedOptions(cuda_graph=True),
    "graph_bf16": SpeedOptions(bf16=True, channels_last=True, cuda_graph=True),
    "all": SpeedOptions(bf16=True, channels_last=True, compile=True, cuda_graph=True),  # on CPU: without cuda_graph
    "fp32_fast": SpeedOptions(channels_last=True, compile=True, cuda_graph=True),  # all but bf16: fp32 numerics
    "compile": SpeedOptions(compile=True),
    "bf16": SpeedOptions(bf16=True),
    "channels_last": SpeedOptions(channels_last=True),
}
# agreement with eager fp32 after the whole loop (mean abs diff over pixels in [-1, 1]): fp32 options differ
# by rounding only (TF32 convolutions on a GPU, fused kernels); bf16 by its 8-bit mantissa
TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def fresh(net: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():  # zero-initialised output layers: eps = 0 would make the check vacuous
                p.normal_(0, 0.02)
    return net.eval()


def build(size: str, device) -> tuple[Loaded, Loaded]:
    res, ch = SHAPES[size]
    schedule = dict(kind="linear", T=1000)
    fp = make_schedule(**schedule).fingerprint()
    eps = Loaded(fresh(build_unet(size, ch, res)).to(device), "eps_model", Path(size), (ch, res, res), 10, fp, schedule)
    clf = Loaded(fresh(build_encoder(size, ch, res, 10)).to(device), "noisy_classifier", Path(size), (ch, res, res),
                 10, fp, schedule)
    return eps, clf


def build_cond(size: str, device) -> Loaded:
    """A class-conditional eps-model of the same preset (label embedding + null label), as model.cond=true trains."""
    res, ch = SHAPES[size]
    schedule = dict(kind="linear", T=1000)
    net = fresh(build_unet(size, ch, res, num_classes=10, null_class=True)).to(device)
    return Loaded(net, "eps_model", Path(size), (ch, res, res), 10, make_schedule(**schedule).fingerprint(), schedule,
                  {"cond": True, "p_uncond": 0.1})


# method -> (scale used, network evaluations per step)
METHOD_ROWS = {"classifier": (1.0, "1 eps + classifier fwd/bwd"), "cond": (0.0, "1 eps"),
               "cfg": (3.0, "2 eps (one batched forward of 2B)"), "cond_classifier": (1.0, "1 eps + classifier fwd/bwd")}


def method_table(configs, names, options, args, device) -> list[str]:
    """ms/step of every guidance method with each chosen speed option (samples of the same seeds)."""
    lines = []
    for size in configs:
        eps, clf = build(size, device)
        cond = build_cond(size, device)
        for opt_name in names:
            for method, (scale, evals) in METHOD_ROWS.items():
                try:
                    ms, x = run(eps, clf, options[opt_name], args.batch, args.steps, scale, device, method, cond)
                    ok = "ok" if bool(torch.isfinite(x).all()) else "non-finite"
                    lines.append(f"| {size} | {args.batch} | {opt_name} | {method} ({scale:g}) | {evals} | "
                                 f"{ms:.2f} | {args.batch / (ms * 250 / 1000):.1f} | {ok} |")
                except Exception as e:  # one broken combination must not hide the others
                    lines.append(f"| {size} | {args.batch} | {opt_name} | {method} | {evals} | failed: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0][:120]} | | FAIL |")
                print(lines[-1], flush=True)
    return lines


def run(eps, clf, opts, batch, steps, scale, device, method="classifier", cond=None) -> tuple[float, torch.Tensor]:
    """(ms per step, samples) of the second of two identical draws."""
    guidance = GuidanceSpec.of(torch.arange(batch) % 10, scale, method=method)
    sampler = SamplerSpec("ddim", steps, clip_x0=True)
    run_opts = RunOptions(batch, device, False, opts)
    for _ in range(2):
        sync(device)
        start = time.perf_counter()
        x, _ = draw(Models(eps, cond, clf if guidance.guided else None), guidance, sampler, range(batch), run_opts)
        sync(device)
    return 1000 * (time.perf_counter() - start) / steps, x


def train_rate(net, loss_fn, batch, steps, device, bf16: bool) -> float:
    """Images/s of fwd + bwd + AdamW (autocast as Lightning's bf16-mixed does), after 2 warm-up steps."""
    net = net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net)
        loss.float().backward()
        opt.step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="bench32,small", help="UNet/encoder presets: tiny, small, bench32, cifar")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50, help="timed DDIM steps per run (ms/step is per step)")
    ap.add_argument("--options", default=None, help=f"comma list of {', '.join(OPTIONS)}; default: all that run here")
    ap.add_argument("--method-options", default="eager,all",
                    help="speed options of the methods table (classifier, cond, cfg, cond_classifier); '' skips it")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=None, help="default: --batch")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # one process compiles many nets and options here (one forward code object): past dynamo's default
    # limit of 8 recompiles it would silently fall back to eager
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 1024
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    options = dict(OPTIONS)
    if device.type != "cuda":  # CUDA graphs need a GPU: skipped by default, refused when named
        options["all"] = SpeedOptions(bf16=True, channels_last=True, compile=True)
        del options["cuda_graph"], options["graph_bf16"], options["fp32_fast"]
    names = args.options.split(",") if args.options else list(options)
    unknown = set(names) - set(options)
    if unknown:
        raise SystemExit(f"unknown or unavailable option(s) {sorted(unknown)} on {device.type}; "
                         f"here: {', '.join(options)}")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; DDIM, {args.steps} timed steps (a CUDA-graph run's capture is "
          f"inside them); diff = guided samples vs eager fp32, same seeds; check: mean abs diff <= "
          f"{TOLERANCE['fp32']:g} (fp32) / {TOLERANCE['bf16']:g} (bf16)\n")
    print("| model config | params (UNet / clf) | batch | precision | option | sampler | unguided ms/step | "
          "guided ms/step | overhead | img/s at 250 steps | max / mean abs diff vs eager | check |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    training, failed = [], []
    for size in args.configs.split(","):
        eps, clf = build(size, device)
        res, ch = SHAPES[size]
        ref = None
        for opt_name in names:
            opts = options[opt_name]
            precision = "bf16" if opts.bf16 else "fp32"
            head = (f"| {size} {res}x{res}x{ch} | {n_params(eps.net) / 1e6:.2f}M / {n_params(clf.net) / 1e6:.2f}M | "
                    f"{args.batch} | {precision} | {opt_name if opt_name != 'all' else 'all: ' + opts.label} | ddim |")
            try:
                plain, _ = run(eps, clf, opts, args.batch, args.steps, 0.0, device)
                guided, x = run(eps, clf, opts, args.batch, args.steps, 1.0, device)
            except Exception as e:  # one broken option must not hide the others' rows
                failed.append(f"{size}/{opt_name}")
                print(f"{head} failed: {type(e).__name__}: {str(e).splitlines()[0][:160]} | | | | | FAIL |", flush=True)
                continue
            ref = x if opt_name == "eager" else ref
            if ref is None:
                diff, check = "n/a (no eager run)", "n/a"
            else:
                d = (x - ref).abs()
                ok = bool(torch.isfinite(x).all()) and d.mean().item() <= TOLERANCE[precision]
                diff, check = f"{d.max().item():.1e} / {d.mean().item():.1e}", "ok" if ok else "FAIL"
                if not ok:
                    failed.append(f"{size}/{opt_name}")
            print(f"{head} {plain:.2f} | {guided:.2f} | {guided / plain:.2f}x | "
                  f"{args.batch / (guided * 250 / 1000):.1f} | {diff} | {check} |", flush=True)
        eps, clf = build(size, device)  # fresh: the options above froze the classifier, changed layouts
        tb = args.train_batch or args.batch
        x = torch.randn(tb, *eps.image_shape, device=device)
        t = torch.randint(0, 1000, (tb,), device=device)
        y = torch.randint(0, 10, (tb,), device=device)
        for bf16 in (False, True):
            u = train_rate(eps.net, lambda m: F.mse_loss(m(x, t).float(), x), tb, args.train_steps, device, bf16)
            c = train_rate(clf.net.requires_grad_(True), lambda m: F.cross_entropy(m(x, t).float(), y), tb,
                           args.train_steps, device, bf16)
            training.append(f"| {size} | {tb} | {'bf16-mixed' if bf16 else '32-true'} | {u:.0f} | {c:.0f} |")
    if args.method_options:
        print("\nguidance methods (DDIM; cfg at gamma = 3, classifier terms at s = 1):\n")
        print("| model config | batch | option | method (scale) | network evaluations per step | ms/step | "
              "img/s at 250 steps | samples |\n|---|---|---|---|---|---|---|---|")
        method_table(args.configs.split(","), args.method_options.split(","), options, args, device)
    print("\ntraining (fwd + bwd + AdamW, images/s):\n")
    print("| model config | batch | precision | eps-model img/s | classifier img/s |\n|---|---|---|---|---|")
    print("\n".join(training))
    if failed:
        raise SystemExit(f"\nFAILED (error or samples off eager beyond tolerance): {', '.join(failed)}")


if __name__ == "__main__":
    main()
