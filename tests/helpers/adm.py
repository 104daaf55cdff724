"""Tiny stand-ins for guided-diffusion's released files: random weights saved under ADM's own names and shapes
(cguide.nets.adm's key map, inverted), 16x16 images, 10 classes, a 100-step schedule; and reference batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cguide.nets import EncoderClassifier, UNet
from cguide.nets.adm import adm_encoder_config, adm_key_map, adm_unet_config, parse_flags

COMMON = "--image_size 16 --num_classes 10 --diffusion_steps 100 --noise_schedule linear"
UNET = (f"{COMMON} --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 8 "
        "--num_head_channels 16 --learn_sigma True --resblock_updown True --use_scale_shift_norm True")
UNCOND_FLAGS = f"{UNET} --class_cond False"
COND_FLAGS = f"{UNET} --class_cond True"
CLASSIFIER_FLAGS = (f"{COMMON} --classifier_width 32 --classifier_depth 1 --channel_mult 1,2 "
                    "--classifier_attention_resolutions 8 --classifier_num_head_channels 16")


def adm_state(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """net's weights, random (output layers included), as guided-diffusion would save them."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for own, (adm, shape, change) in adm_key_map(net).items():
        p = net.state_dict()[own]
        w = torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5 if p.ndim >= 2 else 0.1)
        state[adm] = w.t().contiguous() if change == "T" else w.reshape(shape)
    return state


def write_unet(path: Path, flags: str = UNCOND_FLAGS, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(adm_state(UNet(adm_unet_config(**parse_flags(flags))), seed), path)
    return path


def write_classifier(path: Path, flags: str = CLASSIFIER_FLAGS, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(adm_state(EncoderClassifier(adm_encoder_config(**parse_flags(flags))), seed), path)
    return path


def write_reference(path: Path, n: int = 30, size: int = 16, labels: bool = True, stats_dim: int | None = None,
                    seed: int = 0) -> Path:
    """A reference batch in guided-diffusion's format: arr_0 uint8 [n, size, size, 3], arr_1 labels, and
    (stats_dim) mu / sigma FID statistics."""
    rng = np.random.default_rng(seed)
    arrays = {"arr_0": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)}
    if labels:
        arrays["arr_1"] = np.arange(n) % 10
    if stats_dim:
        a = rng.normal(size=(stats_dim, stats_dim))
        arrays.update(mu=rng.normal(size=stats_dim), sigma=a @ a.T / stats_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def write_judge(path: Path, size: int = 16, classes: int = 10, seed: int = 2) -> Path:
    """A random-weight judge checkpoint for 3-channel images (the ADM stand-ins have no trained judge)."""
    from cguide.io.checkpoints import checkpoint_meta
    from cguide.nets import build_judge

    torch.manual_seed(seed)  # the net's own random initialisation
    net = build_judge("tiny", 3, size, classes)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    meta = checkpoint_meta("judge", "net.", net.cfg.to_dict(), (3, size, size), classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "cguide": meta}, path)
    return path
