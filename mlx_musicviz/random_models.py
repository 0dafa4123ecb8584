"""Architectures for `random:NAME` models: try the pipeline or benchmark with no download.

`random:sdxs-512-0.9` and `random:sdxs-512-dreamshaper` use the reconstructed configs shipped in
`data/configs/` (their `vae_large.json`, the large VAE, is SD's VAE layout: the reconstructed
configs have none); `random:sd-turbo` and `random:sdxl-turbo` are those models' layouts. `random:tiny`
is sdxs-512-0.9's layout at small widths and `random:tiny-sdxl` SDXL-Turbo's (both fast on any CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import MusicvizError

CONFIGS = Path(__file__).resolve().parent / "data" / "configs"
TINY = {
    "unet": {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64, 64],
             "down_block_types": ["CrossAttnDownBlock2D"] * 3, "up_block_types": ["CrossAttnUpBlock2D"] * 3,
             "mid_block_type": None, "layers_per_block": 1, "attention_head_dim": [1, 2, 2],
             "only_cross_attention": [True, False, False], "use_linear_projection": True, "cross_attention_dim": 64},
    "text_encoder": {"_class_name": "CLIPTextModel", "hidden_size": 64, "intermediate_size": 256,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_act": "gelu", "eos_token_id": 2},
    "vae": {"_class_name": "AutoencoderTiny"},
    "vae_large": {"_class_name": "AutoencoderKL", "block_out_channels": [32, 32, 64, 64],  # 8x, as SD's
                  "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                  "layers_per_block": 1, "norm_num_groups": 32},
}
TINY_SDXL = {
    "unet": {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64, 64],
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 2,
             "attention_head_dim": [1, 2, 4], "transformer_layers_per_block": [1, 1, 2], "use_linear_projection": True,
             "cross_attention_dim": 128, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
             "projection_class_embeddings_input_dim": 32 + 6 * 8},
    "text_encoder": {**TINY["text_encoder"], "hidden_act": "quick_gelu"},
    "text_encoder_2": {**TINY["text_encoder"], "_class_name": "CLIPTextModelWithProjection", "projection_dim": 32},
    "vae": {**TINY["vae_large"], "block_out_channels": [32, 32, 32, 32], "scaling_factor": 0.13025,
            "force_upcast": True},
}
SMALL = {"tiny": (TINY, "sdxs-512-0.9", {"tokenizer": "!"}),
         "tiny-sdxl": (TINY_SDXL, "sdxl-turbo", {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"})}


def names() -> list[str]:
    return sorted(SMALL) + sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())


def random_configs(name: str) -> tuple[dict, dict[str, str]]:
    """({component: config}, {tokenizer: pad token}) for a random model name; "vae_large" where it has
    one, "text_encoder_2" and "tokenizer_2" for SDXL."""
    if name in SMALL:
        configs, model, pads = SMALL[name]
        scheduler = json.loads((CONFIGS / model / "scheduler.json").read_text())
        return {**configs, "scheduler": scheduler}, pads
    folder = CONFIGS / name
    if not folder.is_dir():
        raise MusicvizError(f"unknown random model {name!r}; choose one of: {', '.join(names())}")
    configs = {part: json.loads((folder / f"{part}.json").read_text())
               for part in ("unet", "text_encoder", "text_encoder_2", "vae", "vae_large", "scheduler")
               if (folder / f"{part}.json").exists()}
    configs["text_encoder"].setdefault("_class_name", "CLIPTextModel")
    pads = {"tokenizer": json.loads((folder / "special_tokens_map.json").read_text())["pad_token"]}
    if (folder / "special_tokens_map_2.json").exists():
        pads["tokenizer_2"] = json.loads((folder / "special_tokens_map_2.json").read_text())["pad_token"]
    return configs, pads
