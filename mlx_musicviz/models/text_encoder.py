"""CLIPTextModel and CLIPTextModelWithProjection in MLX (OpenAI CLIP ViT-L, OpenCLIP ViT-H in SD2 form,
OpenCLIP ViT-bigG in SDXL form), transformers' names.

Parameters live under `text_model.` as in transformers' checkpoints; the projection's under
`text_projection.`.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .. import ops
from .configs import CLIPTextConfig
from .layers import LayerNorm


def quick_gelu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        out = ops.multi_head_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, self.scale, mask)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.act = quick_gelu if config.hidden_act == "quick_gelu" else ops.gelu
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config.hidden_size, config.num_attention_heads)
        self.layer_norm1 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def __call__(self, input_ids):
        positions = mx.arange(input_ids.shape[1])
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = [CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)]


class CLIPTextTransformer(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


@dataclass
class CLIPTextOutput:
    last_hidden_state: mx.array  # (N, L, D)
    pooler_output: mx.array  # (N, D), the end-of-text position
    penultimate_hidden_state: mx.array  # (N, L, D): the input of the last layer (SDXL's hidden_states[-2])
    text_embeds: mx.array | None = None  # (N, P): the projected pooler output (CLIPTextModelWithProjection)


class CLIPTextModel(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def __call__(self, input_ids: mx.array) -> CLIPTextOutput:
        tm = self.text_model
        x = tm.embeddings(input_ids)
        n = input_ids.shape[1]
        mask = nn.MultiHeadAttention.create_additive_causal_mask(n).astype(x.dtype)
        penultimate = x
        for layer in tm.encoder.layers:
            penultimate = x
            x = layer(x, mask)
        x = tm.final_layer_norm(x)
        # transformers' rule: legacy configs (eos_token_id == 2) take the highest id's position.
        if self.config.eos_token_id == 2:
            eos = mx.argmax(input_ids, axis=-1)
        else:
            eos = mx.argmax((input_ids == self.config.eos_token_id).astype(mx.int32), axis=-1)
        pooled = x[mx.arange(x.shape[0]), eos]
        return CLIPTextOutput(last_hidden_state=x, pooler_output=pooled, penultimate_hidden_state=penultimate)


class CLIPTextModelWithProjection(CLIPTextModel):
    """CLIPTextModel with `text_projection` (no bias): SDXL's second text encoder, whose projected pooled
    output conditions the UNet."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def __call__(self, input_ids: mx.array) -> CLIPTextOutput:
        out = super().__call__(input_ids)
        out.text_embeds = self.text_projection(out.pooler_output)
        return out
