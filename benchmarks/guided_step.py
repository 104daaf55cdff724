"""Guided-step speed per speed option (cguide.runtime.speed), through the production path (cguide.runtime.draw),
with each option's guided samples checked against eager fp32 ones (max abs diff), and training images/s.

    python benchmarks/guided_step.py                          # GPU: bench32 at batch 256 and small, all options
    python benchmarks/guided_step.py --configs tiny,small --batch 32 --steps 5 --threads 2   # CPU
    python benchmarks/guided_step.py --options eager --method-options eager,all     # + every guidance method
                                                      # (and x0-space guidance through a clean guide)
    python benchmarks/guided_step.py --adm-only --threads 2     # guided-diffusion's preset sizes (CPU: ADM-64 only)

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
from cguide.io.adm_checkpoints import adm_schedule, preset_flags
from cguide.io.checkpoints import Loaded
from cguide.nets import (EncoderClassifier, UNet, adm_encoder_config, adm_unet_config, build_encoder, build_judge,
                         build_unet)
from cguide.runtime.draw import Models, RunOptions, draw
from cguide.runtime.speed import SpeedOptions
from where import where, where_line  # benchmarks/where.py

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


def build_guide(size: str, device) -> Loaded:
    """The clean guide of x0-space guidance: the judge's `small` ResNet (task=guide trains it), no schedule."""
    res, ch = SHAPES[size]
    return Loaded(fresh(build_judge("small", ch, res, 10)).to(device), "guide_classifier", Path(size),
                  (ch, res, res), 10, None, None)


# row -> (method, scale used, guidance options, network evaluations per step)
METHOD_ROWS = {"classifier": ("classifier", 1.0, {}, "1 eps + classifier fwd/bwd"),
               "cond": ("cond", 0.0, {}, "1 eps"),
               "cfg": ("cfg", 3.0, {}, "2 eps (one batched forward of 2B)"),
               "cond_classifier": ("cond_classifier", 1.0, {}, "1 eps + classifier fwd/bwd"),
               "x0": ("classifier", 1.0, {"grad_space": "x0"}, "2 eps fwd (1 with grad) + 1 eps bwd + guide fwd/bwd")}


def method_table(configs, names, options, args, device) -> list[str]:
    """ms/step of every guidance method with each chosen speed option (samples of the same seeds)."""
    lines = []
    for size in configs:
        eps, clf = build(size, device)
        cond, guide = build_cond(size, device), build_guide(size, device)
        for opt_name in names:
            for row, (method, scale, extra, evals) in METHOD_ROWS.items():
                if extra.get("grad_space") == "x0" and options[opt_name].cuda_graph:
                    lines.append(f"| {size} | {args.batch} | {opt_name} | {row} | {evals} | n/a: the CUDA-graph "
                                 "step refuses x0-space guidance | | skipped |")
                    print(lines[-1], flush=True)
                    continue
                try:
                    ms, x = run(eps, clf, options[opt_name], args.batch, args.steps, scale, device, method, cond,
                                guide, **extra)
                    ok = "ok" if bool(torch.isfinite(x).all()) else "non-finite"
                    lines.append(f"| {size} | {args.batch} | {opt_name} | {row} ({scale:g}) | {evals} | "
                                 f"{ms:.2f} | {args.batch / (ms * 250 / 1000):.1f} | {ok} |")
                except Exception as e:  # one broken combination must not hide the others
                    lines.append(f"| {size} | {args.batch} | {opt_name} | {row} | {evals} | failed: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0][:120]} | | FAIL |")
                print(lines[-1], flush=True)
    return lines


def run(eps, clf, opts, batch, steps, scale, device, method="classifier", cond=None, guide=None, repeats: int = 2,
        **options) -> tuple[float, torch.Tensor]:
    """(ms per step, samples) of the last of `repeats` identical draws (the first ones warm up); options: other
    guidance settings."""
    guidance = GuidanceSpec.of(torch.arange(batch) % 10, scale, method=method, **options)
    sampler = SamplerSpec("ddim", steps, clip_x0=True)
    run_opts = RunOptions(batch, device, False, opts)
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        models = Models(eps, cond, clf if guidance.guided_x_t else None, guide if guidance.guided_x0 else None)
        x, _ = draw(models, guidance, sampler, range(batch), run_opts)
        sync(device)
    return 1000 * (time.perf_counter() - start) / steps, x


# guided-diffusion's released pairs at their real sizes (random weights): (diffusion preset, classifier, method)
ADM_PAIRS = {"adm64": ("adm64_cond", "adm64_classifier", "cond_classifier"),
             "adm256": ("adm256_uncond", "adm256_classifier", "classifier")}


def build_adm(pair: str, device) -> tuple[Loaded, Loaded]:
    """A preset pair as Loaded nets, as cguide.io.adm_checkpoints.load_adm makes them from the files."""
    unet_preset, clf_preset, method = ADM_PAIRS[pair]
    u_flags, _ = preset_flags(unet_preset, "cond" if method == "cond_classifier" else "eps")
    c_flags, _ = preset_flags(clf_preset, "classifier")
    torch.manual_seed(0)
    unet = fresh(UNet(adm_unet_config(**u_flags))).to(device)
    clf = fresh(EncoderClassifier(adm_encoder_config(**c_flags))).to(device)
    schedule = adm_schedule(u_flags)
    fp, shape = make_schedule(**schedule).fingerprint(), (3, unet.cfg.image_size, unet.cfg.image_size)
    return (Loaded(unet, "eps_model", Path(unet_preset), shape, 1000, fp, schedule, {"adm_preset": unet_preset}),
            Loaded(clf, "noisy_classifier", Path(clf_preset), shape, 1000, fp, schedule, {"adm_preset": clf_preset}))


def adm_table(pairs, batches, steps, device) -> list[str]:
    """ms per guided DDIM step (s = 1) of the ADM pairs: eager fp32, and on a GPU fp16 (guided-diffusion's
    use_fp16) alone and with the CUDA-graph step. On a CPU one draw (no warm-up) of eager fp32 only (tens of
    seconds per step; bf16's agreement is checked in tests/test_adm_runtime.py). Returns the failed rows."""
    cuda = device.type == "cuda"
    opts = {"eager": SpeedOptions()}
    if cuda:
        opts.update(fp16=SpeedOptions(fp16=True), fp16_graph=SpeedOptions(fp16=True, channels_last=True,
                                                                          cuda_graph=True))
    print(f"\nADM presets (random weights, guided DDIM at s = 1, {steps} timed steps):\n")
    print("| pair | params (UNet / clf) | batch | option | method | guided ms/step | img/s at 250 steps | "
          "mean abs diff vs eager | check |\n|---|---|---|---|---|---|---|---|---|")
    failed = []
    for pair in pairs:
        net, clf = build_adm(pair, device)
        method = ADM_PAIRS[pair][2]
        eps, cond = (None, net) if method == "cond_classifier" else (net, None)
        params = f"{n_params(net.net) / 1e6:.0f}M / {n_params(clf.net) / 1e6:.0f}M"
        for batch in batches:
            ref = None
            for name, o in opts.items():
                head = (f"| {pair} ({ADM_PAIRS[pair][0]} + {ADM_PAIRS[pair][1]}) | {params} | {batch} | {name} | "
                        f"{method} |")
                try:
                    ms, x = run(eps, clf, o, batch, steps, 1.0, device, method, cond, repeats=2 if cuda else 1)
                except Exception as e:  # one broken option must not hide the others' rows
                    failed.append(f"{pair}/{batch}/{name}")
                    print(f"{head} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | FAIL |", flush=True)
                    continue
                ref = x if name == "eager" else ref
                d = (x - ref).abs().mean().item() if ref is not None else float("nan")
                ok = bool(torch.isfinite(x).all()) and d <= TOLERANCE["fp32" if name == "eager" else "bf16"]
                if not ok:
                    failed.append(f"{pair}/{batch}/{name}")
                print(f"{head} {ms:.0f} | {batch / (ms * 250 / 1000):.2f} | {d:.1e} | {'ok' if ok else 'FAIL'} |",
                      flush=True)
        del net, clf
    return failed


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
                    help="speed options of the methods table (classifier, cond, cfg, cond_classifier, and x0: "
                         "classifier guidance in x0 space through a clean guide); '' skips it")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=None, help="default: --batch")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--adm", default="auto",
                    help="ADM pairs (adm64, adm256); auto: adm64, and adm256 on a GPU; '' skips")
    ap.add_argument("--adm-batch", default=None, help="comma list; default 2 on CPU, 16,64 on a GPU")
    ap.add_argument("--adm-steps", type=int, default=None, help="timed DDIM steps; default 1 on CPU, 10 on a GPU")
    ap.add_argument("--adm-only", action="store_true", help="only the ADM table")
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
    stamp = where_line(where(device))  # the card or CPU, date, commit and torch of every row below
    cuda = device.type == "cuda"
    pairs = [p for p in (("adm64,adm256" if cuda else "adm64") if args.adm == "auto" else args.adm).split(",") if p]
    adm_batches = [int(b) for b in (args.adm_batch or ("16,64" if cuda else "2")).split(",")]
    if args.adm_only:
        print(stamp)
        failed = adm_table(pairs, adm_batches, args.adm_steps or (10 if cuda else 1), device)
        if failed:
            raise SystemExit(f"\nFAILED: {', '.join(failed)}")
        return
    print(f"{stamp}; DDIM, {args.steps} timed steps (a CUDA-graph run's capture is "
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
        print("\nguidance methods (DDIM; cfg at gamma = 3, classifier terms at s = 1; x0 = classifier with "
              "guidance.grad_space=x0):\n")
        print("| model config | batch | option | method (scale) | network evaluations per step | ms/step | "
              "img/s at 250 steps | samples |\n|---|---|---|---|---|---|---|---|")
        method_table(args.configs.split(","), args.method_options.split(","), options, args, device)
    failed += adm_table(pairs, adm_batches, args.adm_steps or (10 if cuda else 1), device) if pairs else []
    print("\ntraining (fwd + bwd + AdamW, images/s):\n")
    print("| model config | batch | precision | eps-model img/s | classifier img/s |\n|---|---|---|---|---|")
    print("\n".join(training))
    if failed:
        raise SystemExit(f"\nFAILED (error or samples off eager beyond tolerance): {', '.join(failed)}")


if __name__ == "__main__":
    main()
