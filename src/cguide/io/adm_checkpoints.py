"""guided-diffusion (ADM) checkpoints as ``Loaded`` networks, so the sample and sweep entry points take them
beside this project's own files: ``eps_ckpt=models/256x256_diffusion_uncond.pt eps_preset=adm256_uncond``.

What a cguide checkpoint keeps in its metadata comes here from the preset (cguide.nets.adm.PRESETS, or
guided-diffusion's flags as one string): the diffusion schedule of its ``noise_schedule`` /
``diffusion_steps`` flags (``adm_schedule``), the image shape (in_channels, image_size, image_size), the class
count (1000 for the released files) and no null label (its conditional models had no label dropout)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..diffusion import make_schedule
from ..nets.adm import (NUM_CLASSES, PRESETS, RELEASED_FILES, AdmKindError, adm_unet_config, load_adm_classifier,
                        load_adm_unet, preset_or_flags_line)
from .checkpoints import Loaded

ROLES = ("eps", "cond", "classifier")  # the config keys <role>_ckpt / <role>_preset


def adm_schedule(flags: Mapping[str, Any]) -> dict:
    """make_schedule keyword arguments of guided-diffusion's get_named_beta_schedule(noise_schedule,
    diffusion_steps): 'linear' = betas evenly from 1e-4 to 0.02, both scaled by 1000 / T (so the same at
    T = 1000), 'cosine' = Nichol & Dhariwal's, beta capped at 0.999. Equal to its float64 betas within a few
    ulp (numpy's linspace and torch's round differently in the last bit)."""
    kind = str(flags.get("noise_schedule", "linear"))
    T = int(flags.get("diffusion_steps", 1000))
    if kind == "linear":
        scale = 1000 / T  # guided-diffusion's order of operations
        return {"kind": "linear", "T": T, "beta_start": scale * 0.0001, "beta_end": scale * 0.02}
    if kind == "cosine":
        return {"kind": "cosine", "T": T, "cosine_s": 0.008, "max_beta": 0.999}
    raise ValueError(f"ADM flag noise_schedule={kind!r}: guided-diffusion knows linear and cosine")


def preset_flags(preset: str, role: str) -> tuple[dict, str]:
    """(flags, the preset's name) of a preset name or a flags line, checked against the role."""
    key = f"{role}_preset"
    if not isinstance(preset, str) or not preset.strip():
        raise ValueError(f"{key} must be an ADM preset name or guided-diffusion's flags as one string, got {preset!r}")
    what = "a diffusion-model" if role == "classifier" else "a noisy-classifier"
    flags, line = preset_or_flags_line(
        preset, role == "classifier",
        wrong_kind=lambda own: f"{key}={preset} is {what} preset, but {key} takes one of {own}; swap the presets "
                               "(and the files)",
        unknown=lambda own: (f"unknown ADM preset {preset!r} in {key}; known: {own} (or guided-diffusion's flags as "
                             "one quoted string, e.g. '--image_size 64 --num_channels 192 ...')"))
    if line:
        return flags, "the given flags"
    if role == "classifier":  # the classifier's flags hold no schedule: it is the same-size diffusion model's
        flags.update({k: v for k, v in PRESETS[preset.replace("_classifier", "_cond")].items()
                      if k in ("noise_schedule", "diffusion_steps")})
    return flags, preset


def _check_conditioning(flags: dict, name: str, role: str) -> bool:
    cond = adm_unet_config(**flags).num_classes is not None
    shown = name if name in PRESETS else "<flags>"
    if cond and role == "eps":
        raise ValueError(f"eps_preset={shown} is a class-conditional ADM model, but eps_ckpt takes an unconditional "
                         f"one; pass the file as cond_ckpt=... with cond_preset={shown} (methods cond, "
                         "cond_classifier)")
    if not cond and role == "cond":
        raise ValueError(f"cond_preset={shown} is an unconditional ADM model, but cond_ckpt takes a "
                         f"class-conditional one; pass the file as eps_ckpt=... with eps_preset={shown} "
                         "(method classifier)")
    return cond


def _swapped(path, role: str, file_preset: str | None) -> str:
    """The message for a classifier file given as the eps-model, or a diffusion file as the classifier."""
    if role != "classifier":
        return (f"ADM checkpoint {path} holds a noisy classifier (EncoderUNetModel), not a diffusion model; pass it "
                f"as classifier_ckpt=... with classifier_preset={file_preset or '<adm*_classifier>'}, and the "
                f"diffusion model's file as {role}_ckpt")
    if file_preset:
        own = "cond" if file_preset.endswith("_cond") else "eps"
        where = f"{own}_ckpt=... with {own}_preset={file_preset}"
    else:
        where = "eps_ckpt (unconditional) or cond_ckpt (class-conditional) with its preset"
    return (f"ADM checkpoint {path} holds a diffusion model (UNetModel), not a noisy classifier; pass it as "
            f"{where}, and the classifier's file as classifier_ckpt")


def load_adm(path: str | os.PathLike, preset: str, role: str) -> Loaded:
    """The ADM file at ``path`` as a Loaded eps-model (role 'eps': unconditional, 'cond': class-conditional)
    or noisy classifier (role 'classifier'), with the schedule, image shape and classes of its preset."""
    if role not in ROLES:
        raise ValueError(f"unknown ADM role {role!r}; known: {', '.join(ROLES)}")
    flags, name = preset_flags(preset, role)
    source = name if name in PRESETS else flags
    file_preset = RELEASED_FILES.get(Path(path).name)
    try:
        if role == "classifier":
            net, cond = load_adm_classifier(path, source), False
        else:
            cond = _check_conditioning(flags, name, role)
            net = load_adm_unet(path, source)
    except AdmKindError:
        raise ValueError(_swapped(path, role, file_preset)) from None
    cfg = net.cfg
    schedule = adm_schedule(flags)
    kind = "noisy_classifier" if role == "classifier" else "eps_model"
    classes = cfg.num_classes if role == "classifier" else int(flags.get("num_classes", NUM_CLASSES))
    return Loaded(net, kind, Path(path), (cfg.in_channels, cfg.image_size, cfg.image_size), int(classes),
                  make_schedule(**schedule).fingerprint(), schedule,
                  {"adm_preset": name if name in PRESETS else preset.strip(), "cond": cond, "p_uncond": 0.0})


def adm_preset(loaded: Loaded | None) -> str | None:
    """The ADM preset a Loaded came from (None: a cguide checkpoint, or nothing)."""
    return None if loaded is None else loaded.extra.get("adm_preset")
