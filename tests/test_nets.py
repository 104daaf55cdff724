"""Tests for cguide.nets: shapes, presets, configs, invariances of the UNet / encoder / judge."""

from __future__ import annotations

import io
import math

import pytest
import torch

from cguide.nets import (SIZES, EncoderClassifier, EncoderConfig, JudgeConfig, JudgeNet, UNet, UNetConfig,
                         build_encoder, build_judge, build_unet, timestep_embedding)
from cguide.nets.encoder import AttentionPool2d
from cguide.nets.layers import AttentionBlock, norm_groups


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def randomize_zero_params(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers weights, so output comparisons are not 0 == 0."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if not p.any():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def inputs(b: int, c: int, s: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, s, s, generator=g), torch.randint(0, 1000, (b,), generator=g)


def tiny_unet(**kw) -> UNet:
    torch.manual_seed(0)
    return randomize_zero_params(build_unet("tiny", 1, 8, **kw)).eval()


def tiny_encoder(**kw) -> EncoderClassifier:
    torch.manual_seed(0)
    return randomize_zero_params(build_encoder("tiny", 1, 8, 5, **kw)).eval()


# ----------------------------------------------------------------------------- layers


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 7, 999])
    emb = timestep_embedding(t, 6)
    assert emb.shape == (4, 6) and emb.dtype == torch.float32
    for i, ti in enumerate(t.tolist()):
        freqs = [math.exp(-math.log(10000) * j / 3) for j in range(3)]
        expect = [math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs]
        torch.testing.assert_close(emb[i], torch.tensor(expect), atol=1e-4, rtol=0)
    odd = timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and torch.equal(odd[:, :6], emb) and not odd[:, 6].any()


def test_norm_groups_rule():
    assert [norm_groups(c) for c in (8, 16, 32, 64, 128, 256, 96)] == [4, 8, 16, 32, 32, 32, 16]


def test_attention_block_matches_per_head_reference():
    torch.manual_seed(0)
    blk = randomize_zero_params(AttentionBlock(16, num_head_channels=4))
    x = torch.randn(2, 16, 3, 5)
    qkv = blk.qkv(blk.norm(x)).flatten(2)  # [B, 3C, N]: q, k, v blocks, heads contiguous inside each
    q, k, v = qkv.chunk(3, dim=1)
    heads = []
    for h in range(4):
        sl = slice(4 * h, 4 * h + 4)
        w = torch.softmax(torch.einsum("bcn,bcm->bnm", q[:, sl], k[:, sl]) / 2.0, dim=-1)  # sqrt(4) = 2
        heads.append(torch.einsum("bnm,bcm->bcn", w, v[:, sl]))
    ref = x + blk.proj(torch.cat(heads, 1).reshape(x.shape))
    torch.testing.assert_close(blk(x), ref, atol=1e-5, rtol=1e-5)


def test_attention_pool_matches_all_token_reference():
    """ADM computes attention for every token and keeps the first; we compute only that one."""
    torch.manual_seed(0)
    pool = AttentionPool2d(spatial=3, channels=8, num_heads=2, out_dim=5)
    x = torch.randn(2, 8, 3, 3)
    tok = x.flatten(2).transpose(1, 2)
    tok = torch.cat([tok.mean(1, keepdim=True), tok], 1) + pool.pos
    q, k, v = pool.qkv(tok).chunk(3, dim=-1)
    split = lambda a: a.reshape(2, 10, 2, 4).transpose(1, 2)  # noqa: E731
    out = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 2.0, -1) @ split(v)  # [B, heads, 10, 4]
    ref = pool.c_proj(out[:, :, 0].reshape(2, 8))
    torch.testing.assert_close(pool(x), ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- shapes and presets


@pytest.mark.parametrize("image_size", [8, 16])
def test_unet_shapes(image_size):
    x, t = inputs(3, 2, image_size)
    assert build_unet("tiny", 2, image_size)(x, t).shape == x.shape
    assert build_unet("tiny", 2, image_size, out_channels=4)(x, t).shape == (3, 4, image_size, image_size)


@pytest.mark.parametrize("kw", [dict(use_scale_shift_norm=False), dict(resblock_updown=True),
                                dict(num_head_channels=-1, num_heads=2), dict(attention_resolutions=[8, 4])])
def test_unet_variants(kw):
    x, t = inputs(2, 1, 8)
    out = tiny_unet(**kw)(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_scalar_t_broadcasts():
    unet = tiny_unet()
    x, _ = inputs(3, 1, 8)
    torch.testing.assert_close(unet(x, torch.tensor(5)), unet(x, torch.full((3,), 5)))


@pytest.mark.parametrize("pool", ["attention", "avg"])
def test_encoder_shapes_and_input_gradient(pool):
    torch.manual_seed(0)
    enc = build_encoder("tiny", 1, 8, 5, pool=pool)  # fresh init: the gradient must flow from the start
    x, t = inputs(3, 1, 8)
    x.requires_grad_(True)
    logits = enc(x, t)
    assert logits.shape == (3, 5)
    (g,) = torch.autograd.grad(logits.log_softmax(-1)[:, 2].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum(dim=(1, 2, 3)).min() > 0


def test_judge_shapes():
    judge = build_judge("tiny", 3, 16, 7).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert judge(x).shape == (4, 7)
    feats = judge.features(x)
    assert feats.shape == (4, judge.feature_dim) and judge.feature_dim == 32
    assert build_judge("small", 1, 16, 10).feature_dim == 128


def test_preset_param_counts():
    with torch.device("meta"):  # no memory, no init cost
        bench = n_params(build_unet("bench32", 3, 32))
        cifar = n_params(build_unet("cifar", 3, 32))
        enc = n_params(build_encoder("bench32", 3, 32, 10))
        tiny = n_params(build_unet("tiny", 1, 16))
        small = n_params(build_unet("small", 1, 16))
        enc_small = n_params(build_encoder("small", 1, 16, 10))
    assert abs(bench / 8e6 - 1) < 0.15, bench
    assert abs(cifar / 35e6 - 1) < 0.15, cifar
    assert abs(enc / 3.4e6 - 1) < 0.15, enc
    assert tiny < 100_000, tiny
    assert 0.5e6 <= small <= 1.5e6, small
    assert 0.3e6 <= enc_small <= 0.8e6, enc_small


def test_unknown_size_lists_known_names():
    for build, args in [(build_unet, (1, 16)), (build_encoder, (1, 16, 10)), (build_judge, (1, 16, 10))]:
        with pytest.raises(ValueError, match="huge.*known: .*small.*tiny"):
            build("huge", *args)


def test_presets_are_not_mutated_by_builders():
    before = repr(SIZES)
    build_unet("tiny", 1, 8, channel_mult=[1, 2])
    cfg = build_unet("tiny", 1, 8).cfg
    assert repr(SIZES) == before and cfg.channel_mult == (1, 1)


# ----------------------------------------------------------------------------- validation


def test_image_size_not_divisible():
    with pytest.raises(ValueError, match=r"image_size=20 is not divisible by the downsampling factor 8.*"
                                         r"multiple of 8"):
        build_unet("cifar", 3, 20)
    with pytest.raises(ValueError, match=r"image_size=18 .* factor 4"):
        EncoderConfig(image_size=18, in_channels=1, num_classes=3, channel_mult=[1, 2, 2])


def test_config_errors():
    with pytest.raises(ValueError, match=r"attention_resolutions \[32\] never occur"):
        UNetConfig(image_size=16, in_channels=1, attention_resolutions=[32])
    with pytest.raises(ValueError, match="num_head_channels=32 must divide channels=48"):
        UNetConfig(image_size=16, in_channels=1, model_channels=48, channel_mult=[1])
    with pytest.raises(ValueError, match="pool="):
        EncoderConfig(image_size=8, in_channels=1, num_classes=3, pool="max")
    with pytest.raises(TypeError):
        EncoderConfig(image_size=8, in_channels=1)  # no default class count


def test_forward_input_checks():
    unet = build_unet("tiny", 1, 8)
    x, t = inputs(2, 1, 16)
    with pytest.raises(ValueError, match=r"expected x of shape \[B, 1, 8, 8\], got \[2, 1, 16, 16\]"):
        unet(x, t)
    with pytest.raises(ValueError, match="num_classes=None"):
        unet(x[:, :, :8, :8], t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs y"):
        build_unet("tiny", 1, 8, num_classes=3)(x[:, :, :8, :8], t)
    with pytest.raises(ValueError, match="EncoderClassifier"):
        build_encoder("tiny", 1, 8, 3)(x, t)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("make", [
    lambda: build_unet("tiny", 1, 8, num_classes=4),
    lambda: build_encoder("tiny", 1, 8, 4, pool="avg"),
    lambda: build_judge("tiny", 1, 8, 4),
])
def test_config_round_trip_through_weights_only_checkpoint(make):
    torch.manual_seed(0)
    net = randomize_zero_params(make()).eval()
    d = net.cfg.to_dict()
    assert all(isinstance(v, (int, float, str, bool, list, type(None))) for v in d.values()), d
    buf = io.BytesIO()
    torch.save({"config": d, "state_dict": net.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    cfg = type(net.cfg).from_dict(ckpt["config"])
    assert cfg == net.cfg
    torch.manual_seed(123)  # a different init, overwritten by the checkpoint
    net2 = type(net)(cfg).eval()
    net2.load_state_dict(ckpt["state_dict"], strict=True)
    x, t = inputs(2, 1, 8)
    y = torch.tensor([1, 3])
    if isinstance(net, UNet):
        torch.testing.assert_close(net2(x, t, y), net(x, t, y), atol=0, rtol=0)
    elif isinstance(net, EncoderClassifier):
        torch.testing.assert_close(net2(x, t), net(x, t), atol=0, rtol=0)
    else:
        torch.testing.assert_close(net2(x), net(x), atol=0, rtol=0)


def test_from_dict_rejects_unknown_keys():
    d = UNetConfig(image_size=8, in_channels=1).to_dict()
    for cls in (UNetConfig, EncoderConfig, JudgeConfig):
        with pytest.raises(ValueError, match="unknown keys"):
            cls.from_dict({**d, "num_classes": 3, "bogus": 1})


# ----------------------------------------------------------------------------- behaviour


def test_fresh_unet_predicts_zero_and_randomized_does_not():
    x, t = inputs(2, 1, 8)
    assert not build_unet("tiny", 1, 8)(x, t).any()  # zero-init output conv (ADM)
    assert tiny_unet()(x, t).abs().mean() > 1e-3


def test_class_embedding_changes_output():
    unet = tiny_unet(num_classes=3)
    x, t = inputs(2, 1, 8)
    a, b = unet(x, t, torch.tensor([0, 0])), unet(x, t, torch.tensor([0, 2]))
    torch.testing.assert_close(a[0], b[0])
    assert (a[1] - b[1]).abs().max() > 1e-3


def test_time_changes_output():
    unet = tiny_unet()
    x, _ = inputs(1, 1, 8)
    assert (unet(x, torch.tensor([10])) - unet(x, torch.tensor([900]))).abs().max() > 1e-3


@pytest.mark.parametrize("net", ["unet", "encoder", "judge"])
def test_batch_independence(net):
    x, t = inputs(4, 1, 8)
    if net == "unet":
        f = lambda a, b: tiny_unet(num_classes=3)(a, b, b % 3)  # noqa: E731
    elif net == "encoder":
        f = tiny_encoder()
    else:
        judge = build_judge("tiny", 1, 8, 3)
        judge.train()(torch.randn(16, 1, 8, 8))  # non-trivial BatchNorm running stats
        judge.eval()
        f = lambda a, b: judge(a)  # noqa: E731
    with torch.no_grad():
        full = f(x, t)
        for i in range(4):
            torch.testing.assert_close(f(x[i:i + 1], t[i:i + 1]), full[i:i + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("net", ["unet", "encoder"])
def test_channels_last_same_output(net):
    model = tiny_unet(attention_resolutions=[8, 4]) if net == "unet" else tiny_encoder()
    x, t = inputs(2, 1, 8)
    with torch.no_grad():
        ref = model(x, t)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("net", ["unet", "encoder"])
def test_bf16_autocast(net):
    model = tiny_unet() if net == "unet" else tiny_encoder()
    x, t = inputs(2, 1, 8)
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
