"""Networks (plain torch): the eps-model UNet, the noisy classifier, the clean-image judge and the second judge.

Build them by preset name with ``build_unet`` / ``build_encoder`` / ``build_judge`` / ``build_judge_cnn`` (sizes.py),
or from a config dataclass; ``cfg.to_dict()`` / ``Config.from_dict(d)`` round-trip through
checkpoints as plain containers. ``load_adm_unet`` / ``load_adm_classifier`` (adm.py) import
guided-diffusion's released checkpoints by preset name (ADM_PRESETS) or by its flags.
"""

from .adm import PRESETS as ADM_PRESETS
from .adm import adm_encoder_config, adm_unet_config, load_adm_classifier, load_adm_unet
from .encoder import AttentionPool2d, EncoderClassifier, EncoderConfig
from .judge import JudgeConfig, JudgeNet
from .judge_cnn import JudgeCNN, JudgeCNNConfig
from .layers import timestep_embedding
from .sizes import (SIZES, build_encoder, build_judge, build_judge_cnn, build_unet, encoder_config, judge_cnn_config,
                    judge_config, preset, unet_config)
from .unet import UNet, UNetConfig

__all__ = [
    "ADM_PRESETS", "SIZES", "AttentionPool2d", "EncoderClassifier", "EncoderConfig", "JudgeCNN", "JudgeCNNConfig",
    "JudgeConfig", "JudgeNet", "UNet", "UNetConfig", "adm_encoder_config", "adm_unet_config", "build_encoder",
    "build_judge", "build_judge_cnn", "build_unet", "encoder_config", "judge_cnn_config", "judge_config",
    "load_adm_classifier", "load_adm_unet", "preset", "timestep_embedding", "unet_config",
]
