"""Import OpenAI guided-diffusion (ADM, Dhariwal & Nichol 2021) checkpoints into this project's nets.

guided-diffusion's ``UNetModel`` is this project's ``UNet`` and its ``EncoderUNetModel`` (the
noisy classifier) is ``EncoderClassifier``, built with the ADM options of their configs
(``norm_groups=32``, ``stem_channels``, ``attention_order``, ``num_heads_upsample``, fractional
``channel_mult``). What differs is only the names of the weights (and the shapes of a few 1x1
convolutions), which ``adm_key_map`` translates; guided-diffusion itself is never imported.

    unet = load_adm_unet("models/256x256_diffusion.pt", "adm256_cond")       # eps and variance: 6 channels
    clf = load_adm_classifier("models/256x256_classifier.pt", "adm256_classifier")
    unet = load_adm_unet(state_dict, {"image_size": 64, "num_channels": 32, ...})  # flags as a dict
    unet = load_adm_unet(path, "--image_size 64 --num_channels 192 ...")          # or as a command line

Flags take guided-diffusion's script names and defaults (``model_and_diffusion_defaults`` /
``classifier_defaults``): ``adm_unet_config(**flags)`` and ``adm_encoder_config(**flags)``.
Diffusion and sampling flags (diffusion_steps, noise_schedule, timestep_respacing, ...) and the
other net's flags are accepted and ignored, so a README command line can be passed whole;
``use_fp16`` / ``classifier_use_fp16`` / ``use_checkpoint`` do not change the weights (the
released files hold fp32 weights; call ``.half()`` on the net to run it in fp16).

A learn_sigma UNet returns [B, 6, H, W] = eps (channels :3) and the variance interpolation
v (channels 3:), as guided-diffusion's; a class-conditional one takes y in 0..999 and has no
null label. Not supported: the super-resolution models (SuperResModel: upsampler files), 1-D/3-D
nets (dims != 2), ``conv_resample=False``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch
from torch import nn

from .encoder import AttentionPool2d, EncoderClassifier, EncoderConfig
from .layers import AttentionBlock, Downsample, ResBlock, TimeEmbedding, Upsample, level_channels
from .unet import UNet, UNetConfig

NUM_CLASSES = 1000  # guided-diffusion's ImageNet class count (script_util.NUM_CLASSES)

# guided-diffusion's script defaults: the values of the flags a command line does not give.
MODEL_DEFAULTS: dict[str, Any] = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
    attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
    use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
    learn_sigma=False)
CLASSIFIER_DEFAULTS: dict[str, Any] = dict(
    image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
    classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
    classifier_resblock_updown=True, classifier_pool="attention")
# Not guided-diffusion flags: the fixed values of its scripts, open here for other data and for tests.
UNET_EXTRAS: dict[str, Any] = dict(in_channels=3, num_classes=NUM_CLASSES)
CLASSIFIER_EXTRAS: dict[str, Any] = dict(in_channels=3, num_classes=NUM_CLASSES, channel_mult="",
                                         classifier_num_head_channels=64, classifier_use_new_attention_order=False)
# Flags that do not shape a network: accepted and ignored.
IGNORED_FLAGS = frozenset({
    "diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl", "predict_xstart", "rescale_timesteps",
    "rescale_learned_sigmas", "classifier_scale", "use_ddim", "clip_denoised", "batch_size", "num_samples",
    "model_path", "classifier_path"})

# channel_mult by image size when the flag is empty (create_model / create_classifier).
CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}

_CLASSIFIER_FLAGS = ("--classifier_attention_resolutions 32,16,8 --classifier_width 128 --classifier_pool attention "
                     "--classifier_resblock_updown True --classifier_use_scale_shift_norm True")
_MODEL_FLAGS = ("--attention_resolutions 32,16,8 --class_cond {cond} --diffusion_steps 1000 --image_size {size} "
                "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
                "--num_res_blocks 2 --resblock_updown True --use_fp16 {fp16} --use_scale_shift_norm True")
# The flags of guided-diffusion's README for each released file (MODEL_FLAGS / CLASSIFIER_FLAGS;
# the 64x64 classifier's --classifier_depth 4 is on its classifier_sample.py line).
PRESET_FLAGS: dict[str, str] = {
    "adm64_cond": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
                  "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
                  "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True "
                  "--use_fp16 True --use_scale_shift_norm True",
    "adm128_cond": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
                   "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
                   "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "adm256_cond": _MODEL_FLAGS.format(cond=True, size=256, fp16=True),
    "adm256_uncond": _MODEL_FLAGS.format(cond=False, size=256, fp16=True),
    "adm512_cond": _MODEL_FLAGS.format(cond=True, size=512, fp16=False),
    "adm64_classifier": f"--image_size 64 {_CLASSIFIER_FLAGS} --classifier_depth 4",
    "adm128_classifier": f"--image_size 128 {_CLASSIFIER_FLAGS} --classifier_depth 2",
    "adm256_classifier": f"--image_size 256 {_CLASSIFIER_FLAGS} --classifier_depth 2",
    "adm512_classifier": f"--image_size 512 {_CLASSIFIER_FLAGS} --classifier_depth 2",
}
# The released file of each preset (guided-diffusion's README, jul-2021).
RELEASED_FILES: dict[str, str] = {
    "64x64_diffusion.pt": "adm64_cond", "128x128_diffusion.pt": "adm128_cond", "256x256_diffusion.pt": "adm256_cond",
    "256x256_diffusion_uncond.pt": "adm256_uncond", "512x512_diffusion.pt": "adm512_cond",
    "64x64_classifier.pt": "adm64_classifier", "128x128_classifier.pt": "adm128_classifier",
    "256x256_classifier.pt": "adm256_classifier", "512x512_classifier.pt": "adm512_classifier",
}


def parse_flags(line: str) -> dict[str, str]:
    """'--image_size 64 --class_cond True' -> {'image_size': '64', 'class_cond': 'True'} (values stay strings)."""
    words = shlex.split(line)
    if len(words) % 2 or any(not w.startswith("--") for w in words[::2]):
        raise ValueError(f"ADM flags {line!r}: expected pairs '--name value'")
    return {name[2:]: value for name, value in zip(words[::2], words[1::2])}


PRESETS: dict[str, dict[str, str]] = {name: parse_flags(line) for name, line in PRESET_FLAGS.items()}
UNET_PRESETS = tuple(n for n in PRESETS if not n.endswith("_classifier"))
CLASSIFIER_PRESETS = tuple(n for n in PRESETS if n.endswith("_classifier"))


def preset_or_flags_line(preset: str, classifier: bool, wrong_kind: Callable[[str], str],
                         unknown: Callable[[str], str]) -> tuple[dict[str, str], bool]:
    """(flags, whether ``preset`` was guided-diffusion's flags as one string) of a preset name or a flags line.
    A preset of the other net (a diffusion model's where a classifier's belongs, or the reverse) is
    ValueError(wrong_kind(own)), an unknown name ValueError(unknown(own)); own: the right presets, comma-separated."""
    if preset.lstrip().startswith("--"):
        return parse_flags(preset), True
    own, other = (CLASSIFIER_PRESETS, UNET_PRESETS) if classifier else (UNET_PRESETS, CLASSIFIER_PRESETS)
    if preset in other:
        raise ValueError(wrong_kind(", ".join(own)))
    if preset not in own:
        raise ValueError(unknown(", ".join(own)))
    return dict(PRESETS[preset]), False


# ----------------------------------------------------------------------------- flags -> configs


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("yes", "true", "t", "y", "1"):
        return True
    if s in ("no", "false", "f", "n", "0"):
        return False
    raise ValueError(f"ADM flag {name}={v!r}: expected a boolean (True/False)")


def _int(name: str, v: Any) -> int:
    try:
        if isinstance(v, bool) or float(v) != int(float(v)):
            raise ValueError
        return int(float(v))
    except (TypeError, ValueError):
        raise ValueError(f"ADM flag {name}={v!r}: expected an integer") from None


def _numbers(name: str, v: Any, cast: Callable = int) -> list:
    items = [x for x in v.split(",") if x.strip()] if isinstance(v, str) else list(v or ())
    try:
        return [cast(x) for x in items]
    except (TypeError, ValueError):
        raise ValueError(f"ADM flag {name}={v!r}: expected comma-separated numbers") from None


def _flags(kind: str, given: Mapping[str, Any], own: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """own defaults updated by the given flags, each cast to its default's type (as guided-diffusion's argparse)."""
    unknown = sorted(k for k in given if k not in own and k not in other and k not in IGNORED_FLAGS)
    if unknown:
        raise ValueError(f"adm_{kind}_config: unknown flags {unknown}; known: {sorted(own)}")
    out = dict(own)
    for k, v in given.items():
        if k in own:
            d = own[k]
            out[k] = (_bool(k, v) if isinstance(d, bool) else _int(k, v) if isinstance(d, int)
                      else float(v) if isinstance(d, float) else v)
    return out


def _channel_mult(flag_name: str, value: Any, image_size: int) -> tuple:
    if value in ("", None) or (not isinstance(value, str) and not list(value)):
        if image_size not in CHANNEL_MULT:
            raise ValueError(f"ADM flags: image_size={image_size} has no default channel_mult (guided-diffusion "
                             f"knows {sorted(CHANNEL_MULT)}); pass {flag_name}")
        return CHANNEL_MULT[image_size]
    return tuple(_numbers(flag_name, value, float))


def _attention_resolutions(name: str, value: Any, image_size: int, levels: int) -> list[int]:
    """ADM turns each resolution r into the downsampling factor image_size // r and puts attention
    at the levels with that factor (silently none where no level has it); this gives those
    levels' resolutions in pixels, the project's convention."""
    factors = {image_size // r for r in _numbers(name, value) if r > 0}
    return [image_size // 2**level for level in range(levels) if 2**level in factors]


def adm_unet_config(**flags: Any) -> UNetConfig:
    """UNetConfig of guided-diffusion's create_model(**flags) (its MODEL_FLAGS, with the script defaults)."""
    f = _flags("unet", flags, {**MODEL_DEFAULTS, **UNET_EXTRAS}, {**CLASSIFIER_DEFAULTS, **CLASSIFIER_EXTRAS})
    size, mc, in_ch = f["image_size"], f["num_channels"], f["in_channels"]
    mult = _channel_mult("channel_mult", f["channel_mult"], size)
    return UNetConfig(
        image_size=size, in_channels=in_ch, out_channels=2 * in_ch if f["learn_sigma"] else in_ch,
        model_channels=mc, channel_mult=mult, num_res_blocks=f["num_res_blocks"],
        attention_resolutions=_attention_resolutions("attention_resolutions", f["attention_resolutions"], size,
                                                     len(mult)),
        dropout=f["dropout"], num_head_channels=f["num_head_channels"], num_heads=f["num_heads"],
        num_heads_upsample=f["num_heads_upsample"], num_classes=f["num_classes"] if f["class_cond"] else None,
        use_scale_shift_norm=f["use_scale_shift_norm"], resblock_updown=f["resblock_updown"], null_class=False,
        attention_order="new" if f["use_new_attention_order"] else "legacy",
        norm_groups=32, stem_channels=level_channels(mc, mult[0]))


def adm_encoder_config(**flags: Any) -> EncoderConfig:
    """EncoderConfig of guided-diffusion's create_classifier(**flags) (its CLASSIFIER_FLAGS, with the defaults).

    Its attention blocks use the legacy head order (create_classifier does not pass
    use_new_attention_order) and its attention pool the new one; num_head_channels is 64,
    dropout 0, 1000 classes.
    """
    f = _flags("encoder", flags, {**CLASSIFIER_DEFAULTS, **CLASSIFIER_EXTRAS}, {**MODEL_DEFAULTS, **UNET_EXTRAS})
    size, mc = f["image_size"], f["classifier_width"]
    mult = _channel_mult("channel_mult", f["channel_mult"], size)
    return EncoderConfig(
        image_size=size, in_channels=f["in_channels"], num_classes=f["num_classes"], model_channels=mc,
        channel_mult=mult, num_res_blocks=f["classifier_depth"],
        attention_resolutions=_attention_resolutions("classifier_attention_resolutions",
                                                     f["classifier_attention_resolutions"], size, len(mult)),
        dropout=0.0, num_head_channels=f["classifier_num_head_channels"], num_heads=1,
        use_scale_shift_norm=f["classifier_use_scale_shift_norm"], resblock_updown=f["classifier_resblock_updown"],
        pool=str(f["classifier_pool"]), attention_order="new" if f["classifier_use_new_attention_order"] else "legacy",
        norm_groups=32, stem_channels=level_channels(mc, mult[0]))


# ----------------------------------------------------------------------------- weight names


# Per block type: this project's sub-module -> (guided-diffusion's sub-module, shape change).
# Shape changes: "conv1d" = ADM holds a kernel-1 Conv1d weight [O, I, 1] where this project has a
# 1x1 Conv2d [O, I, 1, 1] or a Linear [O, I]; "conv2d" = ADM's 1x1 Conv2d [O, I, 1, 1] for a
# Linear [O, I]; "T" = transposed (AttentionPool2d's positional embedding, [C, HW+1] in ADM).
_BLOCKS: dict[type, dict[str, tuple[str, str]]] = {
    TimeEmbedding: {"mlp.0": ("0", ""), "mlp.2": ("2", "")},
    ResBlock: {"in_norm.0": ("in_layers.0", ""), "in_conv": ("in_layers.2", ""), "emb_layers.1": ("emb_layers.1", ""),
               "out_norm": ("out_layers.0", ""), "out_layers.2": ("out_layers.3", ""),
               "skip": ("skip_connection", "")},
    AttentionBlock: {"norm": ("norm", ""), "qkv": ("qkv", "conv1d"), "proj": ("proj_out", "conv1d")},
    Downsample: {"conv": ("op", "")},
    Upsample: {"conv": ("conv", "")},
    AttentionPool2d: {"pos": ("positional_embedding", "T"), "qkv": ("qkv_proj", "conv1d"),
                      "c_proj": ("c_proj", "conv1d")},
}


def _top_level(net: nn.Module) -> dict[str, tuple[str, str]]:
    """Modules outside the blocks whose name differs: the classifier's head (ADM's ``out`` Sequential)."""
    if not isinstance(net, EncoderClassifier):
        return {}  # the UNet's conv_in, label_emb and out.* have ADM's names already
    pool = net.cfg.pool
    if pool == "attention":
        return {"out_norm.0": ("out.0", ""), "pool": ("out.2", "")}
    if pool == "avg":  # ADM: out = norm, SiLU, AdaptiveAvgPool2d, 1x1 conv, Flatten
        return {"out_norm.0": ("out.0", ""), "pool.2": ("out.3", "conv2d")}
    return {f"pool.{i}": (f"out.{i}", "") for i in range(len(net.pool))}  # spatial: out = the pool's Sequential


def _adm_shape(shape: torch.Size, change: str, param: str) -> tuple[int, ...]:
    shape = tuple(shape)
    if change == "T":
        return shape[::-1]
    if param != "weight" or not change:
        return shape
    return (shape[0], shape[1], 1) if change == "conv1d" else (shape[0], shape[1], 1, 1)


def adm_key_map(net: nn.Module) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """{this project's state-dict key: (guided-diffusion's key, its shape there, shape change)}, in the net's order."""
    renamed: dict[str, tuple[str, str]] = {}  # own module (or direct parameter) -> (ADM name, shape change)
    top = _top_level(net)
    for name, mod in net.named_modules():
        base = top.get(name, (name, ""))[0]
        for local, (adm_local, change) in _BLOCKS.get(type(mod), {}).items():
            renamed[f"{name}.{local}"] = (f"{base}.{adm_local}", change)
    renamed.update({k: v for k, v in top.items() if k not in renamed})
    out = {}
    for key, value in net.state_dict().items():
        prefix, _, param = key.rpartition(".")
        if key in renamed:  # a parameter held by the block itself (AttentionPool2d.pos)
            adm, change = renamed[key]
        else:
            adm_prefix, change = renamed.get(prefix, (prefix, ""))
            adm = f"{adm_prefix}.{param}"
        out[key] = (adm, _adm_shape(value.shape, change, param), change)
    return out


# ----------------------------------------------------------------------------- loading


Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]


class AdmKindError(ValueError):
    """A classifier file given where a UNet is loaded, or the reverse (callers may name their own fix)."""
Preset = Union[str, Mapping[str, Any]]


def _read(source: Source) -> tuple[Mapping[str, Any], str]:
    if isinstance(source, Mapping):
        return source, "(state dict)"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"ADM checkpoint not found: {path}; download it from guided-diffusion's README "
                                f"(https://github.com/openai/guided-diffusion#download-pre-trained-models)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, not a torch file
        raise ValueError(f"ADM checkpoint {path} is truncated or corrupted ({type(e).__name__}); download it "
                         "again") from None
    return state, str(path)


def _resolve(preset: Preset, kind: str) -> tuple[dict[str, Any], str]:
    """(flags, how to name them in messages) of a preset name, a flags mapping or a flags command line."""
    if isinstance(preset, Mapping):
        return dict(preset), "the given flags"
    loader = "load_adm_classifier" if kind == "unet" else "load_adm_unet"
    flags, line = preset_or_flags_line(
        preset, kind != "unet",
        wrong_kind=lambda own: (f"{preset} is an ADM {'classifier' if kind == 'unet' else 'diffusion'} preset; load "
                                f"it with {loader}, or pick one of {own}"),
        unknown=lambda own: f"unknown ADM preset {preset!r}; known: {own}")
    return flags, "the given flags" if line else f"preset {preset}"


def _hint(where: str, src: str) -> str:
    right = RELEASED_FILES.get(Path(src).name) if src != "(state dict)" else None
    return f" ({Path(src).name}: {right})" if right and not where.endswith(right) else ""


def _fit(state: Mapping[str, Any], net: nn.Module, src: str, where: str, kind: str) -> dict[str, torch.Tensor]:
    """The project state dict from an ADM one, or ONE ValueError line naming the first key that does not fit."""
    if "state_dict" in state and "cguide" in state:
        raise ValueError(f"{src} is a cguide checkpoint, not an ADM one; load it with cguide.io.checkpoints.load_net")
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"ADM checkpoint {src} is not a state dict (a flat dict of tensors, as guided-diffusion "
                         "saves its models)")
    keys = list(state)
    if kind == "unet" and not any(k.startswith("output_blocks.") for k in keys) and any(k.startswith("out.")
                                                                                         for k in keys):
        raise AdmKindError(f"ADM checkpoint {src} holds an ADM classifier (EncoderUNetModel keys: out.*), not a UNet; "
                         f"use load_adm_classifier / a classifier preset ({', '.join(CLASSIFIER_PRESETS)})")
    if kind == "classifier" and any(k.startswith("output_blocks.") for k in keys):
        raise AdmKindError(f"ADM checkpoint {src} holds an ADM UNet (UNetModel keys: output_blocks.*), not a classifier; "
                         f"use load_adm_unet / a diffusion preset ({', '.join(UNET_PRESETS)})")
    own_shapes = {k: v.shape for k, v in net.state_dict().items()}
    expected = {adm: (own, shape, change) for own, (adm, shape, change) in adm_key_map(net).items()}
    target = "the preset" if where.startswith("preset") else "the flags"
    problems = []
    for k in keys:  # in the file's order: the first problem is the first key that does not fit
        if k not in expected:
            hint = " (a class-conditional file: class_cond=True)" if k == "label_emb.weight" else ""
            problems.append(f"the file has {k}{hint}, which is not in {target}")
        elif tuple(state[k].shape) != expected[k][1]:
            problems.append(f"{k} is {list(state[k].shape)} in the file, {list(expected[k][1])} in {target}")
    missing = [k for k in expected if k not in state]
    if missing:
        hint = " (an unconditional file: class_cond=False)" if missing[0] == "label_emb.weight" else ""
        problems.append(f"{missing[0]}{hint} is missing from the file ({len(missing)} of {len(expected)} keys "
                        "missing: a truncated file, or another preset's)")
    if problems:
        more = len(problems) - 1 + len(missing) if len(problems) > 1 else 0  # the missing ones are counted in theirs
        raise ValueError(f"ADM checkpoint {src} does not fit {where}: {problems[0]}"
                         f"{f' (+{more} more)' if more else ''}; pick the preset of that file{_hint(where, src)}")
    return {own: state[adm].t() if change == "T" else state[adm].reshape(own_shapes[own])
            for adm, (own, _, change) in expected.items()}


def _load(source: Source, preset: Preset, kind: str, build: Callable[..., Any], net_cls: type) -> nn.Module:
    flags, where = _resolve(preset, kind)
    cfg = build(**flags)
    state, src = _read(source)
    if not isinstance(state, Mapping):
        raise ValueError(f"ADM checkpoint {src} is not a state dict (a flat dict of tensors, as guided-diffusion "
                         "saves its models)")
    with torch.device("meta"):
        net = net_cls(cfg)  # names and shapes only: no memory, no random init to overwrite
    weights = _fit(state, net, src, where, kind)
    assert not list(net.buffers()), "to_empty would leave buffers uninitialised"
    net = net.to_empty(device="cpu")  # the nets hold parameters only: all of them are loaded next
    net.load_state_dict(weights, strict=True)
    return net.eval()


def load_adm_unet(path_or_state_dict: Source, preset_or_flags: Preset) -> UNet:
    """A guided-diffusion UNetModel checkpoint as this project's UNet (eval mode, fp32, on the CPU).

    preset_or_flags: a preset name (PRESETS: adm64_cond, adm128_cond, adm256_cond, adm256_uncond,
    adm512_cond), guided-diffusion's flags as a dict, or its MODEL_FLAGS command line. A file that
    does not fit raises one ValueError line naming the first key that differs.
    """
    return _load(path_or_state_dict, preset_or_flags, "unet", adm_unet_config, UNet)


def load_adm_classifier(path_or_state_dict: Source, preset_or_flags: Preset) -> EncoderClassifier:
    """A guided-diffusion EncoderUNetModel (noisy classifier) checkpoint as this project's EncoderClassifier.

    preset_or_flags: a preset name (adm64_classifier, adm128_classifier, adm256_classifier,
    adm512_classifier), its CLASSIFIER_FLAGS as a dict or a command line. forward(x, t) -> logits [B, 1000].
    """
    return _load(path_or_state_dict, preset_or_flags, "classifier", adm_encoder_config, EncoderClassifier)
