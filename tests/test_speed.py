"""Speed options of the guided step: the static (CUDA-graph) path computes what eager guidance computes,
s = 0 rows stay bitwise unguided, and channels_last / bf16 / compile sample what eager fp32 samples
(within fp32 / bf16 tolerances). CUDA-graph capture itself needs a GPU: benchmarks/guided_step.py
checks it there against eager."""

import pytest
import torch

from cguide.diffusion import SamplerSpec, make_plan, make_schedule, sample
from cguide.guidance import ClassifierGuidance, GuidanceSpec
from cguide.runtime.cuda_graph import sample_static
from cguide.runtime.draw import Models, RunOptions, draw
from cguide.runtime.speed import SpeedOptions
from helpers.nets import NaNClassifier, TinyClassifier, eps_model, tiny_pair


def _pair(static: bool, clf, plan, **kw):
    return ClassifierGuidance(eps_model, clf, plan, GuidanceSpec.of(**kw), static=static)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_static_step_matches_eager_guidance(sampler, eta):
    plan = make_plan(make_schedule("linear", 1000), 12)
    clf = TinyClassifier(dim=4, dtype=torch.float32)
    seeds, s, y = [5, 6, 7, 8], torch.tensor([0.0, 2.0, 5.0, 1.0]), torch.tensor([2, 0, 1, 1])
    kw = dict(y=y, scale=s, variant=["score", "seed_literal", "mean_shift", "unit"], interval=(0.1, 0.8))
    eager = _pair(False, clf, plan, **kw)
    smp = SamplerSpec(sampler, eta=eta)
    ref = sample(eager, (1, 2, 2), plan, seeds, smp, progress=False)
    static = _pair(True, clf, plan, **kw)
    got = sample_static(eps_model, static, (1, 2, 2), plan, seeds, sampler=smp, capture=False)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert static.classifier_calls == eager.classifier_calls > 0  # skipped outside the interval alike
    plain = sample(eps_model, (1, 2, 2), plan, seeds, smp, progress=False)
    assert torch.equal(got[0], plain[0])  # s = 0 row: bitwise unguided
    assert not torch.allclose(got[1:], plain[1:])


def test_static_keeps_s0_rows_bitwise_even_with_nan_gradients():
    plan = make_plan(make_schedule("linear", 1000), 5)
    plain = sample(eps_model, (1, 2, 2), plan, [0, 1], progress=False)
    # NaNClassifier gives row 0 a NaN gradient; its s = 0, so it must still be exactly unguided
    guide = ClassifierGuidance(eps_model, NaNClassifier(), plan, GuidanceSpec.of(0, torch.tensor([0.0, 1.0])),
                               static=True)
    got = sample_static(eps_model, guide, (1, 2, 2), plan, [0, 1], capture=False)
    assert torch.equal(got[0], plain[0]) and torch.isfinite(got).all()
    assert guide.nonfinite_steps.tolist() == [0, 0]
    guide = ClassifierGuidance(eps_model, NaNClassifier(), plan, GuidanceSpec.of(0, 1.0, n=2), static=True)
    sample_static(eps_model, guide, (1, 2, 2), plan, [0, 1], capture=False)
    assert guide.nonfinite_steps.tolist() == [5, 0]  # as the eager path counts
    with pytest.raises(FloatingPointError, match="non-finite classifier gradient for 1 sample"):
        sample_static(eps_model, ClassifierGuidance(eps_model, NaNClassifier(), plan, GuidanceSpec.of(
            0, 1.0, nonfinite="raise", n=2), static=True), (1, 2, 2), plan, [0, 1], capture=False)


@pytest.fixture(scope="module")
def nets():
    return tiny_pair()


def _draw(nets, speed, device="cpu"):
    eps, clf = nets
    spec = GuidanceSpec.of(torch.arange(6) % 10, torch.tensor([0.0, 1.0, 2.0, 0.0, 4.0, 1.0]))
    run = RunOptions(batch_size=4, device=device, progress=False, speed=speed)
    return draw(Models(eps, classifier=clf), spec, SamplerSpec("ddpm", steps=6), list(range(6)), run)[0]


@pytest.mark.parametrize("speed,tol", [({"channels_last": True}, 1e-4), ({"bf16": True}, 0.15),
                                       ({"bf16": True, "channels_last": True}, 0.15)])
def test_speed_options_sample_what_eager_samples(nets, speed, tol):
    ref = _draw(nets, None)
    got = _draw(nets, speed)
    assert ref.abs().max() > 0.1 and not torch.isnan(got).any()
    diff = (got - ref).abs().max().item()
    assert diff <= tol, f"{speed}: max abs diff {diff}"
    if speed.get("bf16"):
        assert diff > 0  # autocast really ran in bf16


def test_cuda_graph_on_cpu_is_refused_in_one_line(nets):
    with pytest.raises(ValueError, match=r"^speed.cuda_graph needs a CUDA device, the sampler runs on cpu"):
        _draw(nets, {"cuda_graph": True})
    with pytest.raises(ValueError, match=r"unknown speed option\(s\) \['fast'\]"):
        SpeedOptions.from_config({"fast": True})


@pytest.mark.slow
def test_compiled_networks_sample_what_eager_samples(nets):
    ref = _draw(nets, None)
    got = _draw(nets, {"compile": True})
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_captured_step_matches_uncaptured_on_gpu(sampler, eta):
    """The same static step body, replayed from a CUDA graph vs run eagerly, on the GPU."""
    plan = make_plan(make_schedule("linear", 1000), 12)
    clf = TinyClassifier(dim=4, dtype=torch.float32).cuda()
    kw = dict(y=torch.tensor([2, 0, 1, 1]), scale=torch.tensor([0.0, 2.0, 5.0, 1.0]),
              variant=["score", "seed_literal", "mean_shift", "unit"], interval=(0.1, 0.8))
    runs = []
    for capture in (False, True):
        guide = _pair(True, clf, plan, **kw)
        runs.append(sample_static(eps_model, guide, (1, 2, 2), plan, [5, 6, 7, 8], sampler=SamplerSpec(sampler, eta=eta),
                                  device="cuda", capture=capture))
        assert guide.classifier_calls > 0
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-5, atol=1e-6)
    plain = sample_static(eps_model, None, (1, 2, 2), plan, [5, 6, 7, 8], sampler=SamplerSpec(sampler, eta=eta),
                          device="cuda")
    assert torch.equal(runs[1][0], plain[0])  # s = 0 row: bitwise unguided under capture too
    assert not torch.allclose(runs[1][1:], plain[1:])  # the captured classifier gradient acted


@pytest.fixture
def no_tf32():
    """cuDNN convolutions default to TF32 on Ampere+; the eager path runs the classifier on the guided rows
    only (another batch size, other kernels), so fp32 comparisons switch TF32 off to see fp32 rounding."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@needs_cuda
@pytest.mark.parametrize("speed,tol", [({"cuda_graph": True}, 1e-4), ({"cuda_graph": True, "compile": True}, 1e-4),
                                       ({"cuda_graph": True, "bf16": True, "channels_last": True}, 0.15)])
def test_cuda_graph_draw_samples_what_eager_samples_on_gpu(nets, speed, tol, no_tf32):
    ref = _draw(nets, None, device="cuda")
    got = _draw(nets, speed, device="cuda")
    assert ref.abs().max() > 0.1 and torch.isfinite(got).all()
    diff = (got - ref).abs().max().item()
    print(f"{speed}: max abs diff {diff:.2e}")
    assert diff <= tol, f"{speed}: max abs diff {diff}"
