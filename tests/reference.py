"""Reference checkpoints built with diffusers / transformers (random weights, fixed seeds).

Tests only: the library never imports torch, diffusers or transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlx_musicviz.models.tokenizer import BUNDLED_VOCABULARY

DATA = Path(__file__).resolve().parent / "data"  # recordings, photos, weights and configs (see data/README.md)
REFERENCE = DATA / "reference"
VOCAB = BUNDLED_VOCABULARY  # the CLIP vocabulary the package ships

SMALL_UNETS = {
    # sdxs-512-0.9's layout, small: 3 levels, no mid block, cross-only first level, linear projections.
    "sdxs09": dict(
        block_out_channels=[32, 64, 64],
        down_block_types=["CrossAttnDownBlock2D"] * 3,
        up_block_types=["CrossAttnUpBlock2D"] * 3,
        mid_block_type=None,
        layers_per_block=1,
        attention_head_dim=[1, 2, 2],
        only_cross_attention=[True, False, False],
        use_linear_projection=True,
        cross_attention_dim=64,
    ),
    # sdxs-512-dreamshaper's layout: no attention at the first level, conv projections, 8 heads.
    "dreamshaper": dict(
        block_out_channels=[32, 64, 64],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        mid_block_type=None,
        layers_per_block=1,
        attention_head_dim=8,
        use_linear_projection=False,
        cross_attention_dim=48,
    ),
    # SD2.1 / SD-Turbo: 4 levels, a mid block, 2 resnets per level, linear projections, heads per level.
    "sd21": dict(
        block_out_channels=[32, 64, 64, 64],
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        layers_per_block=2,
        attention_head_dim=[1, 2, 2, 2],
        use_linear_projection=True,
        cross_attention_dim=64,
    ),
    # SD1.5 / SD2.1: 4 levels, a mid block, 2 resnets per level.
    "sd15": dict(
        block_out_channels=[32, 64, 64, 64],
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=48,
    ),
    # SDXL: no attention at the first level, transformer depth per level, a mid block, linear projections,
    # the text_time added conditioning (pooled width 32 + 6 time ids of 8); context = 48 + 64 wide,
    # both SMALL_TEXT_ENCODERS side by side.
    "sdxl": dict(
        block_out_channels=[32, 64, 64],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        layers_per_block=2,
        attention_head_dim=[1, 2, 4],
        transformer_layers_per_block=[1, 1, 2],
        use_linear_projection=True,
        cross_attention_dim=112,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    ),
}

SMALL_TEXT_ENCODERS = {
    "openclip": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     hidden_act="gelu", bos_token_id=0, eos_token_id=2, projection_dim=64),
    "openai": dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                   hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, projection_dim=48),
}


def read_reference_config(model: str, component: str) -> dict:
    path = REFERENCE / model / component / ("scheduler_config.json" if component == "scheduler" else "config.json")
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def build_unet(config: dict, seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel.from_config(config).eval()
    # Random init leaves some layers at zero in diffusers; give every parameter signal.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model


def build_text_encoder(config: dict, seed: int = 0, projection: bool = False):
    """transformers' CLIPTextModel, or with `projection` CLIPTextModelWithProjection (SDXL's second)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **config)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(cfg).eval()


def build_tiny_vae(config: dict | None = None, seed: int = 0):
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny.from_config(config or {}).eval()


def build_kl_vae(config: dict | None = None, seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    cfg = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
               up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, norm_num_groups=32)
    return AutoencoderKL(**(config or cfg)).eval()


def build_tokenizer(pad_token: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=str(VOCAB / "vocab.json"), merges=str(VOCAB / "merges.txt"), pad_token=pad_token,
                         model_max_length=77)


def build_scheduler(model: str = "sdxs-512-0.9"):
    """The model's scheduler, of the class its config names (PNDM for SDXS, Euler for SD-Turbo)."""
    import diffusers

    path = REFERENCE / model / "scheduler" / "scheduler_config.json"
    return getattr(diffusers, json.loads(path.read_text())["_class_name"]).from_config(read_reference_config(model, "scheduler"))


def save_diffusers_checkpoint(folder: Path, unet, text_encoder, vae, pad_token: str, vae_large=None,
                              scheduler_model: str = "sdxs-512-0.9") -> Path:
    """A StableDiffusionPipeline folder, as the SDXS repos lay it out (safetensors weights)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(pad_token), unet=unet,
        scheduler=build_scheduler(scheduler_model), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    if vae_large is not None:
        vae_large.save_pretrained(Path(folder) / "vae_large", safe_serialization=True)
    return Path(folder)


def small_sdxl_checkpoint(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A small SDXL-Turbo-style checkpoint (the "sdxl" UNet; OpenAI CLIP and OpenCLIP with a projection
    as its two text encoders; a 4-level KL VAE, 8x as SDXL's, with its scaling factor and force_upcast;
    SDXL-Turbo's Euler ancestral scheduler) saved by diffusers' StableDiffusionXLPipeline, and its MLX
    conversion: (diffusers, mlx)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    from mlx_musicviz.convert import convert_checkpoint

    vae = build_kl_vae(dict(block_out_channels=[32, 32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=32,
                            scaling_factor=0.13025, force_upcast=True), seed=seed + 3)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=build_text_encoder(SMALL_TEXT_ENCODERS["openai"], seed=seed + 1),
        text_encoder_2=build_text_encoder({**SMALL_TEXT_ENCODERS["openclip"], "projection_dim": 32}, seed=seed + 2,
                                          projection=True),
        tokenizer=build_tokenizer("<|endoftext|>"), tokenizer_2=build_tokenizer("!"),
        unet=build_unet(SMALL_UNETS["sdxl"], seed=seed),
        scheduler=EulerAncestralDiscreteScheduler.from_config(read_reference_config("sdxl-turbo", "scheduler")),
    )
    src = Path(folder) / "diffusers"
    pipe.save_pretrained(src, safe_serialization=True)
    return src, convert_checkpoint(src, Path(folder) / "mlx")


def rel_l2(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def nchw(x):
    """NHWC numpy -> NCHW torch tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t) -> np.ndarray:
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def small_kl_checkpoint(folder: Path, unet: str, text_encoder: str, pad_token: str, scheduler_model: str,
                        seed: int = 0) -> tuple[Path, Path]:
    """A small SD-style checkpoint (a SMALL_UNETS layout, a SMALL_TEXT_ENCODERS encoder, a KL VAE as its
    vae/, `scheduler_model`'s scheduler) saved by diffusers, and its MLX conversion: (diffusers, mlx)."""
    from mlx_musicviz.convert import convert_checkpoint

    src = save_diffusers_checkpoint(Path(folder) / "diffusers", build_unet(SMALL_UNETS[unet], seed=seed),
                                    build_text_encoder(SMALL_TEXT_ENCODERS[text_encoder], seed=seed + 1),
                                    build_kl_vae(seed=seed + 2), pad_token, scheduler_model=scheduler_model)
    return src, convert_checkpoint(src, Path(folder) / "mlx")
