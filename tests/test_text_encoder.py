"""CLIPTextModel: MLX against transformers on the same weights and token ids."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from reference import SMALL_TEXT_ENCODERS, build_text_encoder, build_tokenizer, read_reference_config, rel_l2

from mlx_musicviz.convert import convert_component
from mlx_musicviz.models import build_model
from mlx_musicviz.weights import load_into

PROMPTS = ["a cat playing the trumpet, oil painting", "neon city at night!!", ""]


def _compare(tmp_path, config, pad):
    ref = build_text_encoder(config, seed=5)
    ref.save_pretrained(tmp_path / "te", safe_serialization=True)
    cfg, weights = convert_component(tmp_path / "te")
    model = load_into(build_model(cfg), weights, "text_encoder")
    ids = build_tokenizer(pad)(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    with torch.no_grad():
        out = ref(torch.tensor(ids))
    got = model(mx.array(ids))
    hidden = rel_l2(np.array(got.last_hidden_state), out.last_hidden_state.numpy())
    pooled = rel_l2(np.array(got.pooler_output), out.pooler_output.numpy())
    return hidden, pooled


@pytest.mark.parametrize("family,pad", [("openclip", "!"), ("openai", "<|endoftext|>")])
def test_small_text_encoder_matches_transformers(tmp_path, family, pad):
    hidden, pooled = _compare(tmp_path, SMALL_TEXT_ENCODERS[family], pad)
    assert hidden <= 1e-4 and pooled <= 1e-4, (hidden, pooled)


@pytest.mark.slow
@pytest.mark.parametrize("model,pad", [("sdxs-512-0.9", "!"), ("sdxs-512-dreamshaper", "<|endoftext|>")])
def test_full_size_text_encoder_matches_transformers(tmp_path, model, pad):
    config = read_reference_config(model, "text_encoder")
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version",
                                                            "vocab_size", "max_position_embeddings")}
    hidden, pooled = _compare(tmp_path, config, pad)
    assert hidden <= 1e-4 and pooled <= 1e-4, (hidden, pooled)
