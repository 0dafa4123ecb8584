"""Pipeline components in MLX, named as in diffusers / transformers."""

from __future__ import annotations

import mlx.nn as nn

from ..errors import MusicvizError
from .autoencoder_kl import AutoencoderKL
from .autoencoder_tiny import AutoencoderTiny
from .configs import CLIPTextConfig, KLVAEConfig, SchedulerConfig, TinyVAEConfig, UNetConfig
from .text_encoder import CLIPTextModel, CLIPTextModelWithProjection
from .tokenizer import CLIPTokenizer
from .unet import UNet2DConditionModel

# The class names that checkpoints write in their config.json, and the MLX ports.
MODEL_CLASSES = {
    "CLIPTextModel": (CLIPTextConfig, CLIPTextModel),
    "CLIPTextModelWithProjection": (CLIPTextConfig, CLIPTextModelWithProjection),
    "UNet2DConditionModel": (UNetConfig, UNet2DConditionModel),
    "AutoencoderTiny": (TinyVAEConfig, AutoencoderTiny),
    "AutoencoderKL": (KLVAEConfig, AutoencoderKL),
}


def class_name_of(config: dict, where: str = "config.json") -> str:
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if name not in MODEL_CLASSES:
        raise MusicvizError(f"{where}: model class {name!r} is not supported (one of {', '.join(MODEL_CLASSES)})")
    return name


def build_model(config: dict, where: str = "config.json") -> nn.Module:
    """An MLX module (random weights) of the architecture a config.json describes."""
    config_cls, model_cls = MODEL_CLASSES[class_name_of(config, where)]
    try:
        return model_cls(config_cls.from_dict(config))
    except (TypeError, ValueError) as e:
        raise MusicvizError(f"{where}: cannot build the model ({e})") from None


__all__ = [
    "AutoencoderKL",
    "AutoencoderTiny",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPTokenizer",
    "KLVAEConfig",
    "MODEL_CLASSES",
    "SchedulerConfig",
    "TinyVAEConfig",
    "UNet2DConditionModel",
    "UNetConfig",
    "build_model",
    "class_name_of",
]
