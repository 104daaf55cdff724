"""ADM import (issue #15): guided-diffusion's own UNetModel / EncoderUNetModel are the oracle.

Random weights at 32x32 (32 channels, one res block, attention at 32 and 16): the state dict of
guided-diffusion's net, loaded by nets/adm.py, must give the same eps, variance channels and
classifier logits (fp32, eval mode) within 1e-5 of the output scale. The presets are checked
against guided-diffusion's create_model / create_classifier with the README flags (names and
shapes of every weight, built on the meta device). guided-diffusion-sdk is in the dev extra.
"""

from __future__ import annotations

import inspect
import re
import math
import warnings

import pytest
import torch

with warnings.catch_warnings():  # its torch.cuda.amp decorators are deprecated
    warnings.simplefilter("ignore")
    gd_unet = pytest.importorskip("guided_diffusion.unet")
    gd_script = pytest.importorskip("guided_diffusion.script_util")

from cguide.nets import EncoderClassifier, UNet  # noqa: E402
from cguide.nets.adm import (CLASSIFIER_PRESETS, PRESETS, UNET_PRESETS, adm_encoder_config,  # noqa: E402
                             adm_key_map, adm_unet_config, load_adm_classifier, load_adm_unet)

SIZE, WIDTH, CLASSES = 32, 32, 10
RTOL = 1e-5


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter, zero-initialised output layers included: weights ~ N(0, 1/fan_in), 1-D ones ~ N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        scale = 1 / math.sqrt(p[0].numel()) if p.ndim >= 2 else 0.1
        p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def batch(seed: int = 1, cond: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, SIZE, SIZE, generator=g)
    t = torch.tensor([0, 417, 999])
    return x, t, (torch.tensor([0, 4, 9]) if cond else None)


def assert_same(ours: torch.Tensor, ref: torch.Tensor, what: str, floor: float = 1e-2) -> None:
    scale = ref.abs().max().item()
    assert scale > floor, f"{what}: the reference output is trivially small ({scale})"
    err = (ours - ref).abs().max().item()
    assert err <= RTOL * scale, f"{what}: max |ours - ADM| = {err:.3g} > {RTOL} * {scale:.3g}"


# ----------------------------------------------------------------------------- UNet parity

# Every pair of (attention order, class-conditional, learn_sigma, scale-shift norm, resblock_updown)
# values occurs in these six rows; then fixed num_heads with another decoder head count, and a
# fractional channel_mult (ADM 512's 0.5: conv_in narrower than model_channels).
UNET_CASES = [
    dict(new_order=False, cond=False, sigma=False, ss=False, updown=False),
    dict(new_order=False, cond=True, sigma=True, ss=True, updown=True),
    dict(new_order=True, cond=False, sigma=True, ss=True, updown=False),
    dict(new_order=True, cond=True, sigma=False, ss=False, updown=True),
    dict(new_order=True, cond=True, sigma=True, ss=False, updown=False),
    dict(new_order=False, cond=False, sigma=False, ss=True, updown=True),
    dict(new_order=False, cond=True, sigma=True, ss=True, updown=False, heads=(2, -1, 4)),
    dict(new_order=True, cond=False, sigma=True, ss=True, updown=True, mult=(0.5, 2), width=64),
]


def _unet_pair(case: dict, seed: int = 0):
    """(guided-diffusion UNetModel with random weights, the same net's flags)."""
    num_heads, num_head_channels, num_heads_upsample = case.get("heads", (1, 16, -1))
    mult, width = case.get("mult", (1, 2)), case.get("width", WIDTH)
    ref = gd_unet.UNetModel(
        image_size=SIZE, in_channels=3, model_channels=width, out_channels=6 if case["sigma"] else 3,
        num_res_blocks=1, attention_resolutions=(1, 2), dropout=0.1, channel_mult=mult,
        num_classes=CLASSES if case["cond"] else None, num_heads=num_heads, num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample, use_scale_shift_norm=case["ss"], resblock_updown=case["updown"],
        use_new_attention_order=case["new_order"])
    flags = dict(image_size=SIZE, num_channels=width, num_res_blocks=1, attention_resolutions="32,16", dropout=0.1,
                 channel_mult=",".join(map(str, mult)), class_cond=case["cond"], num_classes=CLASSES,
                 learn_sigma=case["sigma"], num_heads=num_heads, num_head_channels=num_head_channels,
                 num_heads_upsample=num_heads_upsample, use_scale_shift_norm=case["ss"],
                 resblock_updown=case["updown"], use_new_attention_order=case["new_order"],
                 diffusion_steps=1000, noise_schedule="linear")  # diffusion flags: accepted, ignored
    return randomize(ref, seed), flags


@pytest.mark.parametrize("case", UNET_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_unet_matches_guided_diffusion(case, tmp_path):
    ref, flags = _unet_pair(case)
    path = tmp_path / "adm_unet.pt"
    torch.save(ref.state_dict(), path)
    net = load_adm_unet(path, flags)
    assert isinstance(net, UNet) and not net.training
    x, t, y = batch(cond=case["cond"])
    with torch.no_grad():
        want, got = ref(x, t, y), net(x, t, y)
    assert got.shape == want.shape == (3, 6 if case["sigma"] else 3, SIZE, SIZE)
    assert_same(got[:, :3], want[:, :3], "eps")
    if case["sigma"]:
        assert_same(got[:, 3:], want[:, 3:], "variance channels")


# ----------------------------------------------------------------------------- classifier parity

CLASSIFIER_CASES = [
    dict(pool="attention", new_order=False, ss=True, updown=True),  # ADM's released layout
    dict(pool="attention", new_order=True, ss=False, updown=False),
    dict(pool="adaptive", new_order=False, ss=True, updown=False),
    dict(pool="spatial", new_order=True, ss=True, updown=True),
    dict(pool="spatial_v2", new_order=False, ss=False, updown=True),
]


def _classifier_pair(case: dict, seed: int = 0):
    ref = gd_unet.EncoderUNetModel(
        image_size=SIZE, in_channels=3, model_channels=WIDTH, out_channels=CLASSES, num_res_blocks=1,
        attention_resolutions=(1, 2), channel_mult=(1, 2), num_head_channels=16, use_scale_shift_norm=case["ss"],
        resblock_updown=case["updown"], use_new_attention_order=case["new_order"], pool=case["pool"])
    flags = dict(image_size=SIZE, classifier_width=WIDTH, classifier_depth=1, classifier_attention_resolutions="32,16",
                 channel_mult="1,2", num_classes=CLASSES, classifier_num_head_channels=16,
                 classifier_use_scale_shift_norm=case["ss"], classifier_resblock_updown=case["updown"],
                 classifier_use_new_attention_order=case["new_order"], classifier_pool=case["pool"])
    return randomize(ref, seed), flags


@pytest.mark.parametrize("case", CLASSIFIER_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_classifier_matches_guided_diffusion(case):
    ref, flags = _classifier_pair(case)
    net = load_adm_classifier(ref.state_dict(), flags)
    assert isinstance(net, EncoderClassifier) and not net.training
    x, t, _ = batch()
    y = torch.tensor([1, 5, 9])
    grads = []
    for model in (ref, net):  # the logits, and the guidance gradient grad_x log p(y | x_t, t)
        xg = x.clone().requires_grad_(True)
        logits = model(xg, t)
        (g,) = torch.autograd.grad(logits.log_softmax(-1)[torch.arange(3), y].sum(), xg)
        grads.append((logits.detach(), g))
    (want, g_want), (got, g_got) = grads
    assert got.shape == (3, CLASSES)
    assert_same(got, want, f"logits ({case['pool']} pool)")
    assert_same(g_got, g_want, f"grad log p ({case['pool']} pool)", floor=1e-6)  # near-uniform p: small


# ----------------------------------------------------------------------------- presets


def _adm_args(fn, defaults: dict, flags: dict) -> dict:
    """guided-diffusion's argparse step: README flag strings cast to the defaults' types."""
    d = dict(defaults)
    for k, v in flags.items():
        if k in d:
            d[k] = gd_script.str2bool(v) if isinstance(d[k], bool) else type(d[k])(v)
    return {k: d[k] for k in inspect.signature(fn).parameters}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_matches_guided_diffusion_factory(name):
    """Every weight's name and shape of create_model / create_classifier with the README flags (meta device)."""
    flags = PRESETS[name]
    with torch.device("meta"):
        if name in UNET_PRESETS:
            ref = gd_script.create_model(**_adm_args(gd_script.create_model, gd_script.model_and_diffusion_defaults(),
                                                     flags))
            net = UNet(adm_unet_config(**flags))
        else:
            ref = gd_script.create_classifier(**_adm_args(gd_script.create_classifier,
                                                          gd_script.classifier_defaults(), flags))
            net = EncoderClassifier(adm_encoder_config(**flags))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {adm: shape for adm, shape, _ in adm_key_map(net).values()}
    assert got == want


def test_preset_configs():
    assert set(UNET_PRESETS) == {"adm64_cond", "adm128_cond", "adm256_cond", "adm256_uncond", "adm512_cond"}
    assert set(CLASSIFIER_PRESETS) == {f"adm{s}_classifier" for s in (64, 128, 256, 512)}
    c64 = adm_unet_config(**PRESETS["adm64_cond"])
    assert (c64.attention_order, c64.num_head_channels, c64.num_res_blocks, c64.dropout) == ("new", 64, 3, 0.1)
    assert c64.attention_resolutions == (32, 16, 8) and c64.out_channels == 6 and c64.num_classes == 1000
    c128 = adm_unet_config(**PRESETS["adm128_cond"])
    assert (c128.attention_order, c128.num_heads, c128.num_head_channels) == ("legacy", 4, -1)
    c512 = adm_unet_config(**PRESETS["adm512_cond"])
    assert c512.channel_mult == (0.5, 1, 1, 2, 2, 4, 4) and c512.stem_channels == 128 and c512.norm_groups == 32
    assert adm_unet_config(**PRESETS["adm256_uncond"]).num_classes is None
    assert not adm_unet_config(**PRESETS["adm256_cond"]).null_class
    clf = adm_encoder_config(**PRESETS["adm64_classifier"])
    assert (clf.num_res_blocks, clf.model_channels, clf.pool, clf.attention_order) == (4, 128, "attention", "legacy")
    assert clf.num_classes == 1000 and clf.num_head_channels == 64
    round_trip = type(c512).from_dict(c512.to_dict())
    assert round_trip == c512


# ----------------------------------------------------------------------------- errors


def _meta_state(name: str) -> dict:
    """A released file's names and shapes (meta tensors): enough for the checks, which run before loading."""
    flags = PRESETS[name]
    with torch.device("meta"):
        if name in UNET_PRESETS:
            ref = gd_script.create_model(**_adm_args(gd_script.create_model, gd_script.model_and_diffusion_defaults(),
                                                     flags))
        else:
            ref = gd_script.create_classifier(**_adm_args(gd_script.create_classifier,
                                                          gd_script.classifier_defaults(), flags))
    return ref.state_dict()


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_wrong_preset_names_first_mismatching_key():
    with pytest.raises(ValueError) as e:
        load_adm_unet(_meta_state("adm64_cond"), "adm256_uncond")
    assert re.fullmatch(r"ADM checkpoint \(state dict\) does not fit preset adm256_uncond: time_embed.0.weight is "
                        r"\[768, 192\] in the file, \[1024, 256\] in the preset \(\+\d+ more\); pick the preset of "
                        r"that file", one_line(e))
    with pytest.raises(ValueError, match=r"does not fit preset adm256_uncond: the file has label_emb.weight \(a "
                                         r"class-conditional file: class_cond=True\), which is not in the preset; "
                                         r"pick the preset of that file$"):
        load_adm_unet(_meta_state("adm256_cond"), "adm256_uncond")
    with pytest.raises(ValueError, match=r"does not fit preset adm256_cond: label_emb.weight \(an unconditional file: "
                                         r"class_cond=False\) is missing from the file \(1 of 567 keys missing"):
        load_adm_unet(_meta_state("adm256_uncond"), "adm256_cond")
    with pytest.raises(ValueError, match=r"does not fit preset adm128_classifier: input_blocks.10.0.in_layers.2.weight "
                                         r"is \[256, 256, 3, 3\] in the file, \[384, 256, 3, 3\] in the preset"):
        load_adm_classifier(_meta_state("adm256_classifier"), "adm128_classifier")


def test_wrong_preset_on_a_released_file_name_suggests_its_preset(tmp_path):
    ref, flags = _unet_pair(UNET_CASES[1])
    path = tmp_path / "256x256_diffusion.pt"
    torch.save(ref.state_dict(), path)
    with pytest.raises(ValueError) as e:
        load_adm_unet(path, "adm256_uncond")
    msg = one_line(e)
    assert msg.startswith(f"ADM checkpoint {path} does not fit preset adm256_uncond: time_embed.0.weight is [128, 32] "
                          "in the file, [1024, 256] in the preset")
    assert msg.endswith("; pick the preset of that file (256x256_diffusion.pt: adm256_cond)")
    small = dict(flags, num_channels=64)
    with pytest.raises(ValueError, match=r"does not fit the given flags: time_embed.0.weight is \[128, 32\] in the "
                                         r"file, \[256, 64\] in the flags"):
        load_adm_unet(path, small)


def test_truncated_state_dict_and_truncated_file(tmp_path):
    ref, flags = _unet_pair(UNET_CASES[0])
    state = ref.state_dict()
    keys = list(state)
    cut = {k: state[k] for k in keys[: len(keys) // 2]}
    with pytest.raises(ValueError) as e:
        load_adm_unet(cut, flags)
    assert one_line(e) == (f"ADM checkpoint (state dict) does not fit the given flags: {keys[len(keys) // 2]} is "
                           f"missing from the file ({len(keys) - len(keys) // 2} of {len(keys)} keys missing: a "
                           "truncated file, or another preset's); pick the preset of that file")
    path = tmp_path / "cut.pt"
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError) as e:
        load_adm_unet(path, flags)
    assert one_line(e).startswith(f"ADM checkpoint {path} is truncated or corrupted (")
    with pytest.raises(FileNotFoundError, match="ADM checkpoint not found"):
        load_adm_unet(tmp_path / "nope.pt", flags)


def test_classifier_file_given_as_unet_and_back(tmp_path):
    clf, clf_flags = _classifier_pair(CLASSIFIER_CASES[0])
    path = tmp_path / "64x64_classifier.pt"
    torch.save(clf.state_dict(), path)
    with pytest.raises(ValueError) as e:
        load_adm_unet(path, "adm64_cond")
    assert one_line(e) == (f"ADM checkpoint {path} holds an ADM classifier (EncoderUNetModel keys: out.*), not a "
                           "UNet; use load_adm_classifier / a classifier preset (adm64_classifier, adm128_classifier, "
                           "adm256_classifier, adm512_classifier)")
    unet, _ = _unet_pair(UNET_CASES[0])
    with pytest.raises(ValueError) as e:
        load_adm_classifier(unet.state_dict(), clf_flags)
    assert one_line(e).startswith("ADM checkpoint (state dict) holds an ADM UNet (UNetModel keys: output_blocks.*), "
                                  "not a classifier; use load_adm_unet")


def test_flag_and_preset_errors():
    with pytest.raises(ValueError, match="adm64_classifier is an ADM classifier preset; load it with "
                                         "load_adm_classifier"):
        load_adm_unet({}, "adm64_classifier")
    with pytest.raises(ValueError, match=r"unknown ADM preset 'adm32'; known: adm64_cond, adm128_cond"):
        load_adm_unet({}, "adm32")
    with pytest.raises(ValueError, match=r"adm_unet_config: unknown flags \['num_chanels'\]"):
        adm_unet_config(num_chanels=64)
    with pytest.raises(ValueError, match="image_size=32 has no default channel_mult"):
        adm_unet_config(image_size=32)
    with pytest.raises(ValueError, match=r"class_cond='maybe': expected a boolean"):
        adm_unet_config(class_cond="maybe")
    with pytest.raises(ValueError, match="not a state dict"):
        load_adm_unet({"weights": [1, 2]}, "adm64_cond")
