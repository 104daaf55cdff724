"""Guided sampling parity with guided-diffusion (issue #15): its own p_sample_loop / ddim_sample_loop with a
cond_fn (classifier_sample.py's: grad log p(y | x_t) times the scale) are the oracle for this project's guided
DDPM (learned variance, mean_shift) and guided DDIM (score), clip_x0 on (clip_then_guide) and off.

Networks: random-weight guided-diffusion UNetModel (learn_sigma) and EncoderUNetModel saved and imported by
nets/adm.py, run in float64 by both samplers (guided-diffusion's own modules cast to float32 inside:
GroupNorm32, the timestep embedding; their fp32 parity with the imported nets is test_adm_import's). Noise: the
project's per-seed draws, fed to guided-diffusion as x_T (noise=) and through its torch.randn_like, step by step.
Respacings "25", "ddim25", "100" of T = 1000 (linear), rescale_timesteps off as in its configs; its respaced
model wrapper hands the networks ORIGINAL timesteps, as the project's eps_fn gets them.

Measured max relative errors (16x16, scale 10): 3e-8 .. 1e-6, all from guided-diffusion's own float32 rounding
(its coefficient tables and condition_mean are cast to float32); with those casts lifted they are ~2e-15.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

with warnings.catch_warnings():  # its torch.cuda.amp decorators are deprecated
    warnings.simplefilter("ignore")
    gd_unet = pytest.importorskip("guided_diffusion.unet", reason="guided-diffusion-sdk (dev extra) not installed")
    gd_diffusion = pytest.importorskip("guided_diffusion.gaussian_diffusion")
    gd_script = pytest.importorskip("guided_diffusion.script_util")

from cguide.diffusion import SamplerSpec, make_schedule, sample, seeded_normal  # noqa: E402
from cguide.guidance import ClassifierGuidance, GuidanceSpec, MethodEps  # noqa: E402
from cguide.nets.adm import load_adm_classifier, load_adm_unet  # noqa: E402

SIZE, WIDTH, CLASSES, SHAPE = 16, 32, 10, (3, 16, 16)
SEEDS, Y = [11, 12], torch.tensor([1, 7])
RTOL = 1e-5


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter (zero-initialised output layers too): weights ~ N(0, 1/fan_in), 1-D ones ~ N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (1 / math.sqrt(p[0].numel()) if p.ndim >= 2 else 0.1))
    return model.eval()


@pytest.fixture(scope="module")
def nets():
    """{'uncond', 'cond': imported learn_sigma UNets, 'clf': imported classifier}, float64."""
    common = dict(image_size=SIZE, in_channels=3, model_channels=WIDTH, num_res_blocks=1, attention_resolutions=(1, 2),
                  channel_mult=(1, 2), num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True)
    flags = dict(image_size=SIZE, num_channels=WIDTH, num_res_blocks=1, attention_resolutions="16,8",
                 channel_mult="1,2", learn_sigma=True, num_classes=CLASSES, num_head_channels=16,
                 use_scale_shift_norm=True, resblock_updown=True)
    out = {}
    for seed, (name, cond) in enumerate([("uncond", False), ("cond", True)]):
        ref = randomize(gd_unet.UNetModel(out_channels=6, dropout=0.0, num_classes=CLASSES if cond else None,
                                          **common), seed)
        out[name] = load_adm_unet(ref.state_dict(), flags | dict(class_cond=cond)).double()
    clf = randomize(gd_unet.EncoderUNetModel(out_channels=CLASSES, pool="attention", **common), 2)
    out["clf"] = load_adm_classifier(clf.state_dict(), dict(
        image_size=SIZE, classifier_width=WIDTH, classifier_depth=1, classifier_attention_resolutions="16,8",
        channel_mult="1,2", num_classes=CLASSES, classifier_num_head_channels=16, classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True, classifier_pool="attention")).double()
    return out


class _TorchWithNoise:
    """torch as guided_diffusion.gaussian_diffusion sees it, with randn_like returning the project's draws."""

    def __init__(self, draws: list[torch.Tensor]):
        self._draws = draws

    def randn_like(self, x):
        z = self._draws.pop(0)
        assert z.shape == x.shape and z.dtype == x.dtype, (z.shape, x.shape, z.dtype, x.dtype)
        return z

    def __getattr__(self, name):
        return getattr(torch, name)


def guided_diffusion_sample(nets, sampler, respacing, cond, clip, scale):
    """guided-diffusion's loop as its classifier_sample.py runs it, on the project's noise."""
    diffusion = gd_script.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                                    timestep_respacing=respacing)
    K = diffusion.num_timesteps
    seeds = torch.tensor(SEEDS)
    draws = [seeded_normal(seeds, i + 1, SHAPE, dtype=torch.float64) for i in range(K - 1, -1, -1)]
    net, clf = nets["cond" if cond else "uncond"], nets["clf"]

    def model_fn(x, t, y=None):
        return net(x, t, y if cond else None)

    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            selected = F.log_softmax(clf(x_in, t), dim=-1)[range(len(x)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    loop = diffusion.p_sample_loop if sampler == "ddpm" else diffusion.ddim_sample_loop
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gd_diffusion, "th", _TorchWithNoise(draws))
        out = loop(model_fn, (len(SEEDS), *SHAPE), noise=seeded_normal(seeds, 0, SHAPE, dtype=torch.float64),
                   clip_denoised=clip, cond_fn=cond_fn, model_kwargs={"y": Y}, device="cpu")
    assert not draws, f"guided-diffusion took {K - len(draws)} noise draws for {K} steps"
    return out, sorted(diffusion.timestep_map)


def project_sample(nets, sampler, respacing, cond, clip, scale, variant):
    steps = int(respacing.removeprefix("ddim"))
    smp = SamplerSpec(sampler, steps, "leading" if respacing.startswith("ddim") else "uniform",
                      var_type="learned", clip_x0=clip)
    schedule = make_schedule("linear", 1000)
    plan = smp.plan(schedule)
    net = nets["cond" if cond else "uncond"]
    spec = GuidanceSpec.of(Y, scale, variant, method="cond_classifier" if cond else "classifier")
    eps_fn = MethodEps(None, net, spec) if cond else (lambda x, t: net(x, t))
    guide = ClassifierGuidance(smp.base_eps(eps_fn, schedule), nets["clf"], plan, spec)
    x = sample(guide, SHAPE, plan, SEEDS, dtype=torch.float64, progress=False, **smp.options)
    return x, plan.timesteps.tolist()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# (sampler, respacing, class-conditional model (ADM-G) or not, clip_x0): DDPM on "25" / "100", DDIM on
# "ddim25" / "100", each with clipping on and off and both model kinds among them
# the 100-step cases cost most of the file's time: they run in the slow suite (make test-slow)
SLOW = pytest.mark.slow
CASES = [("ddpm", "25", False, True), ("ddpm", "25", True, False), pytest.param("ddpm", "100", True, True, marks=SLOW),
         ("ddim", "ddim25", False, True), ("ddim", "ddim25", True, False),
         pytest.param("ddim", "100", False, True, marks=SLOW)]
VARIANT = {"ddpm": "mean_shift", "ddim": "score"}  # condition_mean (Alg. 1) and condition_score (Alg. 2)
SCALE = 10.0


@pytest.mark.parametrize("sampler,respacing,cond,clip", CASES,
                         ids=[f"{s}-{r}-{'cond' if c else 'uncond'}-{'clip' if k else 'noclip'}"
                              for s, r, c, k in (getattr(p, "values", p) for p in CASES)])
def test_guided_sampling_matches_guided_diffusion(nets, sampler, respacing, cond, clip):
    want, gd_steps = guided_diffusion_sample(nets, sampler, respacing, cond, clip, SCALE)
    got, steps = project_sample(nets, sampler, respacing, cond, clip, SCALE, VARIANT[sampler])
    assert steps == gd_steps, "the respaced steps differ from guided-diffusion's space_timesteps"
    assert torch.isfinite(want).all() and want.abs().max() > 0.1
    err = rel_err(got, want)
    print(f"{sampler} {respacing} cond={cond} clip={clip}: max relative error {err:.2e}")
    assert err <= RTOL, f"max |ours - guided-diffusion| / max |guided-diffusion| = {err:.3g} > {RTOL}"


@pytest.mark.parametrize("sampler,wrong", [("ddpm", "mean_shift_large"), ("ddim", "seed_literal")])
def test_parity_sees_the_guidance_term(nets, sampler, wrong):
    """The comparison above is not blind to the guidance: another c_t (for DDPM Sigma = beta_t instead of the
    learned variance) misses guided-diffusion's samples by far more than the tolerance."""
    respacing = "25" if sampler == "ddpm" else "ddim25"
    want, _ = guided_diffusion_sample(nets, sampler, respacing, False, True, SCALE)
    got, _ = project_sample(nets, sampler, respacing, False, True, SCALE, wrong)
    assert rel_err(got, want) > 100 * RTOL


def _extract_float64(arr, timesteps, broadcast_shape):
    """guided-diffusion's _extract_into_tensor without its .float(): its tables stay float64."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps]
    return res.view(-1, *[1] * (len(broadcast_shape) - 1)).expand(broadcast_shape)


def _condition_mean_float64(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
    """guided-diffusion's condition_mean (mean + variance * gradient) without its .float() casts."""
    return p_mean_var["mean"] + p_mean_var["variance"] * cond_fn(x, self._scale_timesteps(t), **model_kwargs)


@pytest.mark.parametrize("sampler,respacing,cond,clip", [("ddpm", "25", True, True), ("ddim", "ddim25", False, True)])
def test_parity_is_exact_with_guided_diffusions_float32_casts_lifted(nets, sampler, respacing, cond, clip,
                                                                    monkeypatch):
    """The ~1e-7..1e-6 left above is guided-diffusion's own float32 rounding (_extract_into_tensor casts its
    float64 tables, condition_mean its mean and gradient, to float32): without those casts the samples agree to
    float64 rounding, so no approximation hides in the project's formulas."""
    monkeypatch.setattr(gd_diffusion, "_extract_into_tensor", _extract_float64)
    monkeypatch.setattr(gd_diffusion.GaussianDiffusion, "condition_mean", _condition_mean_float64)
    want, _ = guided_diffusion_sample(nets, sampler, respacing, cond, clip, SCALE)
    got, _ = project_sample(nets, sampler, respacing, cond, clip, SCALE, VARIANT[sampler])
    assert rel_err(got, want) <= 1e-12
