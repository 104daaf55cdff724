"""guided-diffusion (ADM) files in the sample and sweep entry points: load_models builds a Loaded with the
preset's schedule, image shape and classes; a learn_sigma net gives the samplers eps alone; cfg is refused
(no null label); fp16 / bf16 speed options apply to ADM nets; bad presets and swapped files are one line.
Tiny random-weight stand-ins (tests/helpers/adm.py) take the place of the released files."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch

from cguide.diffusion import SamplerSpec, make_plan, make_schedule, sample
from cguide.guidance import GuidanceSetting, GuidanceSpec
from cguide.io.adm_checkpoints import adm_schedule, load_adm, preset_flags
from cguide.nets.adm import PRESETS
from cguide.runtime.draw import Models, RunOptions, draw, load_models
from cguide.runtime.learned_sigma import EpsOnly, eps_net
from cguide.runtime.speed import SpeedOptions
from helpers.adm import CLASSIFIER_FLAGS, COND_FLAGS, UNCOND_FLAGS, write_classifier, write_unet
from helpers.config import compose_cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("adm")
    return {"eps": write_unet(d / "uncond.pt"), "cond": write_unet(d / "cond.pt", COND_FLAGS, seed=3),
            "clf": write_classifier(d / "clf.pt")}


def spec(method="classifier", scale=1.0, n=2):
    return GuidanceSpec.of(torch.arange(n) % 10, scale, method=method, n=n)


def test_schedules_equal_guided_diffusions_betas():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gd = pytest.importorskip("guided_diffusion.gaussian_diffusion")
    for kind in ("linear", "cosine"):
        for T in (1000, 100):  # 100: linear's betas are scaled by 1000 / T
            want = torch.from_numpy(gd.get_named_beta_schedule(kind, T))
            got = make_schedule(**adm_schedule({"noise_schedule": kind, "diffusion_steps": T})).betas
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0)  # equal up to float64 rounding
    # the released files: cosine for 64x64 (its classifier too), linear elsewhere; 1000 steps everywhere
    for name in PRESETS:
        flags, _ = preset_flags(name, "classifier" if name.endswith("_classifier") else "eps")
        assert adm_schedule(flags)["kind"] == ("cosine" if name.startswith("adm64") else "linear")
        assert adm_schedule(flags)["T"] == 1000


def test_load_models_builds_adm_loaded(files):
    presets = {"eps": UNCOND_FLAGS, "cond": COND_FLAGS, "classifier": CLASSIFIER_FLAGS}
    both = GuidanceSpec.from_settings([GuidanceSetting(1.0, method=m) for m in ("classifier", "cond_classifier")],
                                      torch.arange(2))
    m = load_models(str(files["eps"]), str(files["cond"]), str(files["clf"]), both, presets=presets)
    for loaded, kind in ((m.eps, "eps_model"), (m.cond, "eps_model"), (m.classifier, "noisy_classifier")):
        assert loaded.kind == kind and loaded.image_shape == (3, 16, 16) and loaded.num_classes == 10
        assert loaded.schedule == {"kind": "linear", "T": 100, "beta_start": 1e-3, "beta_end": 0.2}
        assert loaded.fingerprint == make_schedule(**loaded.schedule).fingerprint()
    assert (m.eps.conditional, m.cond.conditional) == (False, True)
    assert m.cond.net.null_label is None and m.cond.extra["adm_preset"] == COND_FLAGS
    # a cguide checkpoint path without a preset still goes to load_net
    with pytest.raises(ValueError, match=r"has no 'cguide' metadata: .*; a guided-diffusion \(ADM\) file needs its "
                                         r"preset, e.g. eps_preset=adm256_uncond$"):
        load_models(str(files["eps"]), None, None, spec(scale=0.0))


def test_learn_sigma_net_gives_fixed_variance_samplers_eps_only(files):
    eps = load_adm(files["eps"], UNCOND_FLAGS, "eps")
    assert eps.net.cfg.out_channels == 6
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 70])
    wrapped = eps_net(eps.net, eps.net)
    assert isinstance(wrapped, EpsOnly)
    with torch.no_grad():
        assert torch.equal(wrapped(x, t), eps.net(x, t)[:, :3])
    three = torch.nn.Conv2d(3, 3, 1)  # a net without a cfg (or with 3 output channels) is passed as it is
    assert eps_net(three, three) is three
    # a draw at s = 0 is sampling with the first three channels as eps, bit for bit
    plan = make_plan(make_schedule(**eps.schedule), 4)
    with torch.no_grad():
        ref = sample(lambda x, t: eps.net(x, t)[:, :3], (3, 16, 16), plan, [0, 1], sampler="ddpm", progress=False)
    got, _ = draw(Models(eps), spec(scale=0.0), SamplerSpec("ddpm", 4), [0, 1], RunOptions(2, "cpu", False))
    assert torch.equal(got, ref)


def test_learned_variance_ddpm_gets_eps_and_v(files):
    eps = load_adm(files["eps"], UNCOND_FLAGS, "eps")
    assert eps_net(eps.net, eps.net, "learned") is eps.net  # [eps, v] for the learned variance
    plan = make_plan(make_schedule(**eps.schedule), 4)
    with torch.no_grad():
        ref = sample(lambda x, t: eps.net(x, t), (3, 16, 16), plan, [0, 1], SamplerSpec("ddpm", var_type="learned"),
                     progress=False)
    run = RunOptions(2, "cpu", False)
    got, _ = draw(Models(eps), spec(scale=0.0), SamplerSpec("ddpm", 4, var_type="learned"), [0, 1], run)
    fixed, _ = draw(Models(eps), spec(scale=0.0), SamplerSpec("ddpm", 4), [0, 1], run)
    assert torch.equal(got, ref) and not torch.allclose(got, fixed)


def test_adm_guided_draw_runs_on_both_methods(files):
    eps, cond = load_adm(files["eps"], UNCOND_FLAGS, "eps"), load_adm(files["cond"], COND_FLAGS, "cond")
    clf = load_adm(files["clf"], CLASSIFIER_FLAGS, "classifier")
    run = RunOptions(4, "cpu", False)
    rows = [GuidanceSetting(s, method=m) for m in ("classifier", "cond_classifier") for s in (0.0, 5.0)]
    g = GuidanceSpec.from_settings(rows, torch.tensor([1, 1, 7, 7]))
    x, bad = draw(Models(eps, cond, clf), g, SamplerSpec("ddim", 3, clip_x0=True), [0, 0, 1, 1], run)
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all() and bad.tolist() == [0] * 4
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[2], x[3])  # the classifier term moved them


def test_cfg_is_refused_for_an_adm_conditional_model(files):
    with pytest.raises(ValueError) as e:
        load_models(None, str(files["cond"]), None, spec("cfg", 3.0), presets={"cond": COND_FLAGS})
    assert re.fullmatch(r"cfg needs the null-label eps, but the ADM model .*cond\.pt \(--image_size 16 .*\) has no "
                        r"null label \(guided-diffusion trained it without label dropout\); use method cond or "
                        r"cond_classifier", str(e.value))


@pytest.mark.parametrize("role,preset,message", [
    ("eps", "adm256", r"unknown ADM preset 'adm256' in eps_preset; known: adm64_cond, .*adm256_uncond, adm512_cond "
                      r"\(or guided-diffusion's flags as one quoted string, e\.g\. '--image_size 64 .*'\)"),
    ("eps", "adm256_classifier", r"eps_preset=adm256_classifier is a noisy-classifier preset, but eps_preset takes "
                                 r"one of adm64_cond, .*; swap the presets \(and the files\)"),
    ("classifier", "adm256_uncond", r"classifier_preset=adm256_uncond is a diffusion-model preset, but "
                                    r"classifier_preset takes one of adm64_classifier, .*; swap the presets "
                                    r"\(and the files\)"),
    ("eps", "adm256_cond", r"eps_preset=adm256_cond is a class-conditional ADM model, but eps_ckpt takes an "
                           r"unconditional one; pass the file as cond_ckpt=\.\.\. with cond_preset=adm256_cond "
                           r"\(methods cond, cond_classifier\)"),
    ("cond", "adm256_uncond", r"cond_preset=adm256_uncond is an unconditional ADM model, but cond_ckpt takes a "
                              r"class-conditional one; pass the file as eps_ckpt=\.\.\. with eps_preset=adm256_uncond "
                              r"\(method classifier\)"),
])
def test_preset_mistakes_are_one_line(files, role, preset, message):
    with pytest.raises(ValueError) as e:
        load_adm(files["eps"], preset, role)
    assert "\n" not in str(e.value) and re.fullmatch(message, str(e.value)), str(e.value)


def test_swapped_files_and_a_file_of_another_preset(files, tmp_path):
    with pytest.raises(ValueError) as e:
        load_adm(files["clf"], UNCOND_FLAGS, "eps")
    assert str(e.value) == (f"ADM checkpoint {files['clf']} holds a noisy classifier (EncoderUNetModel), not a "
                            "diffusion model; pass it as classifier_ckpt=... with classifier_preset=<adm*_classifier>, "
                            "and the diffusion model's file as eps_ckpt")
    released = tmp_path / "256x256_diffusion.pt"
    released.write_bytes(files["cond"].read_bytes())
    with pytest.raises(ValueError) as e:
        load_adm(released, CLASSIFIER_FLAGS, "classifier")
    assert str(e.value) == (f"ADM checkpoint {released} holds a diffusion model (UNetModel), not a noisy classifier; "
                            "pass it as cond_ckpt=... with cond_preset=adm256_cond, and the classifier's file as "
                            "classifier_ckpt")
    with pytest.raises(ValueError, match=r"does not fit preset adm256_uncond: time_embed\.0\.weight is \[128, 32\] in "
                                         r"the file, \[1024, 256\] in the preset \(\+\d+ more\); pick the preset"):
        load_adm(files["eps"], "adm256_uncond", "eps")
    with pytest.raises(FileNotFoundError, match=r"ADM checkpoint not found: .*nope\.pt; download it from "
                                                r"guided-diffusion's README"):
        load_adm(tmp_path / "nope.pt", "adm256_uncond", "eps")


def test_fp16_needs_cuda_and_bf16_samples_like_fp32(files):
    eps, clf = load_adm(files["eps"], UNCOND_FLAGS, "eps"), load_adm(files["clf"], CLASSIFIER_FLAGS, "classifier")
    smp, g = SamplerSpec("ddim", 3, clip_x0=True), spec(scale=2.0, n=4)
    with pytest.raises(ValueError, match=r"^speed\.fp16 needs a CUDA device \(fp16 autocast is a GPU path\), the "
                                         r"sampler runs on cpu; use speed\.bf16=true here"):
        draw(Models(eps, None, clf), g, smp, range(4), RunOptions(4, "cpu", False, SpeedOptions(fp16=True)))
    with pytest.raises(ValueError, match="speed.fp16 and speed.bf16 are both on"):
        SpeedOptions(fp16=True, bf16=True).check(torch.device("cuda"))
    ref, _ = draw(Models(eps, None, clf), g, smp, range(4), RunOptions(4, "cpu", False))
    got, _ = draw(Models(eps, None, clf), g, smp, range(4), RunOptions(4, "cpu", False, SpeedOptions(bf16=True)))
    diff = (got - ref).abs()
    assert 0 < diff.mean().item() < 2e-2, diff.mean().item()  # bf16 did run, and stayed near fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs a CUDA GPU")
def test_fp16_on_cuda_samples_like_fp32(files):
    eps, clf = load_adm(files["eps"], UNCOND_FLAGS, "eps"), load_adm(files["clf"], CLASSIFIER_FLAGS, "classifier")
    smp, g = SamplerSpec("ddim", 3, clip_x0=True), spec(scale=2.0, n=4)
    ref, _ = draw(Models(eps, None, clf), g, smp, range(4), RunOptions(4, "cuda", False))
    got, _ = draw(Models(eps, None, clf), g, smp, range(4), RunOptions(4, "cuda", False, SpeedOptions(fp16=True)))
    assert 0 < (got - ref).abs().mean().item() < 1e-2


def test_sample_entry_point_takes_adm_presets(files, tmp_path):
    from cguide.sample import run_sample

    cfg = compose_cfg("sample", [f"eps_ckpt={files['eps']}", f"eps_preset='{UNCOND_FLAGS}'",
                                 f"classifier_ckpt={files['clf']}", f"classifier_preset='{CLASSIFIER_FLAGS}'",
                                 "classes=[2,9]", "n_per_class=2", "sampler.steps=3", "guidance.scale=2",
                                 "progress=false", "device=cpu"], tmp_path)
    with np.load(run_sample(cfg)) as z:
        assert z["samples"].shape == (4, 3, 16, 16) and z["targets"].tolist() == [2, 2, 9, 9]
        settings = json.loads(z["settings"].item())
    assert settings["eps_preset"] == UNCOND_FLAGS and settings["classifier_preset"] == CLASSIFIER_FLAGS
