"""Named size presets for the nets, and their builders (one factory dict, as in DiT).

UNet/encoder presets give attention as downsampling factors (``attention_ds``: 2 = half the
image size), so one preset fits any image size; the builder turns them into the configs'
``attention_resolutions`` in pixels. An explicit ``attention_resolutions=`` override wins.

Parameter counts (3 channels, 32x32, 10 classes where it matters):
  unet bench32 ~8.0M, unet cifar ~38.3M, encoder bench32 ~3.3M.
"""

from __future__ import annotations

from typing import Any, Optional

from .encoder import EncoderClassifier, EncoderConfig
from .judge import JudgeConfig, JudgeNet
from .judge_cnn import JudgeCNN, JudgeCNNConfig
from .unet import UNet, UNetConfig

# The trunk sizes the UNet and the noisy classifier share (the classifier is the UNet's downsampling half).
TRUNK_SIZES: dict[str, dict[str, Any]] = {
    # Unit tests: a forward pass in milliseconds at 8x8 / 16x16; < 100k params.
    "tiny": dict(model_channels=16, channel_mult=[1, 1], num_res_blocks=1, attention_ds=[2], num_head_channels=8),
    # 16x16 MNIST on 2 CPU cores (see benchmarks/nets_speed.py).
    "small": dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention_ds=[2],
                  num_head_channels=32),
}

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "unet": {
        **TRUNK_SIZES,
        # ADM layout at 32px (resblock_updown as in guided-diffusion): ~8.0M params.
        "bench32": dict(model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=2, attention_ds=[2, 4],
                        num_head_channels=32, resblock_updown=True, dropout=0.1),
        # DDPM's CIFAR-10 layout with scale-shift norm: ~38.3M params.
        "cifar": dict(model_channels=128, channel_mult=[1, 2, 2, 2], num_res_blocks=2, attention_ds=[2],
                      num_head_channels=32, dropout=0.1),
    },
    "encoder": {
        **TRUNK_SIZES,
        # guided-diffusion's classifier layout (depth 2, width 64, attention pool): ~3.3M params.
        "bench32": dict(model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=2, attention_ds=[2, 4],
                        num_head_channels=32, resblock_updown=True, pool="attention"),
    },
    "judge": {
        "tiny": dict(width=8, stage_mult=[1, 2, 4], blocks_per_stage=1),
        "small": dict(width=32, stage_mult=[1, 2, 4], blocks_per_stage=2, dropout=0.1),
    },
    # the second judge (plain VGG-style CNN): small ~0.29M params, about a third of the judge's small step time
    "judge_cnn": {
        "tiny": dict(width=8, stage_mult=[1, 2, 4], convs_per_stage=1),
        "small": dict(width=32, stage_mult=[1, 2, 4], convs_per_stage=2, dropout=0.1),
    },
}


def preset(net: str, size: str) -> dict[str, Any]:
    """A copy of one preset's fields; unknown net or size -> ValueError listing the known names."""
    if net not in SIZES:
        raise ValueError(f"unknown net {net!r}; known: {sorted(SIZES)}")
    if size not in SIZES[net]:
        raise ValueError(f"unknown {net} size {size!r}; known: {sorted(SIZES[net])}")
    return {k: list(v) if isinstance(v, list) else v for k, v in SIZES[net][size].items()}


def _resolve(net: str, size: str, image_size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    fields = preset(net, size)
    attention_ds = fields.pop("attention_ds", None)
    if attention_ds is not None:
        fields["attention_resolutions"] = [image_size // d for d in attention_ds]
    fields.update(overrides)
    return fields


def unet_config(size: str, in_channels: int, image_size: int, num_classes: Optional[int] = None,
                **overrides: Any) -> UNetConfig:
    return UNetConfig(image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                      **_resolve("unet", size, image_size, overrides))


def encoder_config(size: str, in_channels: int, image_size: int, num_classes: int,
                   **overrides: Any) -> EncoderConfig:
    return EncoderConfig(image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                         **_resolve("encoder", size, image_size, overrides))


def judge_config(size: str, in_channels: int, image_size: int, num_classes: int,
                 **overrides: Any) -> JudgeConfig:
    return JudgeConfig(image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                       **_resolve("judge", size, image_size, overrides))


def judge_cnn_config(size: str, in_channels: int, image_size: int, num_classes: int,
                     **overrides: Any) -> JudgeCNNConfig:
    return JudgeCNNConfig(image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                          **_resolve("judge_cnn", size, image_size, overrides))


def build_unet(size: str, in_channels: int, image_size: int, num_classes: Optional[int] = None,
               **overrides: Any) -> UNet:
    return UNet(unet_config(size, in_channels, image_size, num_classes, **overrides))


def build_encoder(size: str, in_channels: int, image_size: int, num_classes: int,
                  **overrides: Any) -> EncoderClassifier:
    return EncoderClassifier(encoder_config(size, in_channels, image_size, num_classes, **overrides))


def build_judge(size: str, in_channels: int, image_size: int, num_classes: int, **overrides: Any) -> JudgeNet:
    return JudgeNet(judge_config(size, in_channels, image_size, num_classes, **overrides))


def build_judge_cnn(size: str, in_channels: int, image_size: int, num_classes: int, **overrides: Any) -> JudgeCNN:
    return JudgeCNN(judge_cnn_config(size, in_channels, image_size, num_classes, **overrides))
