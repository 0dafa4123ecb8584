"""Model configurations read from a checkpoint's `config.json` files into dataclasses.

Field names follow diffusers / transformers, so a checkpoint's config maps one to one.
Unknown keys are ignored; keys the port cannot honour are refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import MusicvizError


def _as_tuple(value: Any, n: int) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise MusicvizError(f"config value {value!r} has {len(value)} entries, expected {n}")
        return tuple(value)
    return (value,) * n


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MusicvizError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MusicvizError(f"{path} is not valid JSON ({e})") from None


def _from_dict(cls, data: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class _Config:
    @classmethod
    def from_dict(cls, data: dict):
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, path: str | Path):
        return cls.from_dict(read_json(Path(path)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CLIPTextConfig(_Config):
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    projection_dim: int = 768

    def __post_init__(self):
        if self.hidden_act not in ("quick_gelu", "gelu"):
            raise MusicvizError(f"text encoder activation {self.hidden_act!r} is not supported")


@dataclasses.dataclass
class UNetConfig(_Config):
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple = (320, 640, 1280, 1280)
    down_block_types: tuple = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    layers_per_block: Any = 2
    attention_head_dim: Any = 8
    num_attention_heads: Any = None
    cross_attention_dim: int = 768
    only_cross_attention: Any = False
    use_linear_projection: bool = False
    transformer_layers_per_block: Any = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    resnet_out_scale_factor: float = 1.0
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    upcast_attention: bool = False
    act_fn: str = "silu"
    time_embedding_type: str = "positional"
    resnet_time_scale_shift: str = "default"
    addition_embed_type: str | None = None  # "text_time": SDXL's pooled text + size/crop conditioning
    addition_time_embed_dim: int | None = None  # SDXL: the sinusoid width of each of the 6 time ids
    projection_class_embeddings_input_dim: int | None = None  # SDXL: pooled text width + 6 * that width
    class_embed_type: str | None = None
    time_cond_proj_dim: int | None = None
    sample_size: int = 64

    def __post_init__(self):
        n = len(self.block_out_channels)
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise MusicvizError("unet config: block types and block_out_channels differ in length")
        unsupported = {
            "act_fn": (self.act_fn, "silu"),
            "time_embedding_type": (self.time_embedding_type, "positional"),
            "resnet_time_scale_shift": (self.resnet_time_scale_shift, "default"),
            "class_embed_type": (self.class_embed_type, None),
            "time_cond_proj_dim": (self.time_cond_proj_dim, None),
        }
        for key, (value, wanted) in unsupported.items():
            if value != wanted:
                raise MusicvizError(f"unet config: {key}={value!r} is not supported (only {wanted!r})")
        if self.addition_embed_type not in (None, "text_time"):
            raise MusicvizError(f"unet config: addition_embed_type={self.addition_embed_type!r} is not supported "
                                "(only None or 'text_time')")
        if self.addition_embed_type == "text_time" and not (self.addition_time_embed_dim
                                                             and self.projection_class_embeddings_input_dim):
            raise MusicvizError("unet config: 'text_time' needs addition_time_embed_dim and "
                                "projection_class_embeddings_input_dim")
        for t in self.down_block_types:
            if t not in ("CrossAttnDownBlock2D", "DownBlock2D"):
                raise MusicvizError(f"unet config: down block type {t!r} is not supported")
        for t in self.up_block_types:
            if t not in ("CrossAttnUpBlock2D", "UpBlock2D"):
                raise MusicvizError(f"unet config: up block type {t!r} is not supported")
        if self.mid_block_type not in (None, "UNetMidBlock2DCrossAttn"):
            raise MusicvizError(f"unet config: mid block type {self.mid_block_type!r} is not supported")
        # diffusers' long-standing naming quirk: without num_attention_heads,
        # attention_head_dim holds the number of heads.
        heads = self.num_attention_heads if self.num_attention_heads is not None else self.attention_head_dim
        self.heads = _as_tuple(heads, n)
        self.layers = _as_tuple(self.layers_per_block, n)
        self.transformer_layers = _as_tuple(self.transformer_layers_per_block, n)
        self.only_cross = _as_tuple(self.only_cross_attention, n)

    def to_dict(self) -> dict:
        derived = ("heads", "layers", "transformer_layers", "only_cross")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in derived}


@dataclasses.dataclass
class TinyVAEConfig(_Config):
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    encoder_block_out_channels: tuple = (64, 64, 64, 64)
    decoder_block_out_channels: tuple = (64, 64, 64, 64)
    num_encoder_blocks: tuple = (1, 3, 3, 3)
    num_decoder_blocks: tuple = (3, 3, 3, 1)
    upsampling_scaling_factor: int = 2
    act_fn: str = "relu"
    upsample_fn: str = "nearest"
    latent_magnitude: float = 3.0
    latent_shift: float = 0.5
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    # TAESD FLUX.2 variant: blocks with a 1x1-conv + GroupNorm branch (counted from the
    # deepest level: the last `midblock_gn_blocks` encoder blocks, the first decoder ones).
    midblock_gn_blocks: int = 0

    def __post_init__(self):
        if self.act_fn != "relu" or self.upsample_fn != "nearest":
            raise MusicvizError("tiny VAE config: only relu activations and nearest upsampling are supported")


@dataclasses.dataclass
class KLVAEConfig(_Config):
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_post_quant_conv: bool = True
    use_quant_conv: bool = True
    mid_block_add_attention: bool = True
    act_fn: str = "silu"
    force_upcast: bool = False  # SDXL's VAE: overflows in float16, so it decodes in float32


@dataclasses.dataclass
class SchedulerConfig(_Config):
    class_name: str = "PNDMScheduler"  # the config's `_class_name`
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = False
    steps_offset: int = 1
    timestep_spacing: str = "trailing"
    trained_betas: Any = None
    use_karras_sigmas: bool = False
    original_inference_steps: int = 50  # LCM, TCD: the grid their one step is taken from
    timestep_scaling: float = 10.0  # LCM: the boundary condition's time scale

    @classmethod
    def from_dict(cls, data: dict):
        return _from_dict(cls, {**data, "class_name": data.get("_class_name", cls.class_name)})
