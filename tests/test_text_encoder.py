"""CLIPTextModel and CLIPTextModelWithProjection: MLX against transformers on the same weights and token ids."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from reference import SMALL_TEXT_ENCODERS, build_text_encoder, build_tokenizer, read_reference_config, rel_l2

from mlx_musicviz.convert import convert_component
from mlx_musicviz.models import build_model
from mlx_musicviz.weights import load_into

PROMPTS = ["a cat playing the trumpet, oil painting", "neon city at night!!", ""]


def _compare(tmp_path, config, pad, projection=False):
    """Relative L2 errors of the last hidden state, the penultimate one (SDXL's), and the pooled output
    (with `projection`: the projected one, `text_embeds`)."""
    ref = build_text_encoder(config, seed=5, projection=projection)
    ref.save_pretrained(tmp_path / "te", safe_serialization=True)
    cfg, weights = convert_component(tmp_path / "te")
    model = load_into(build_model(cfg), weights, "text_encoder")
    ids = build_tokenizer(pad)(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    with torch.no_grad():
        out = ref(torch.tensor(ids), output_hidden_states=True)
    got = model(mx.array(ids))
    hidden = rel_l2(np.array(got.last_hidden_state), out.last_hidden_state.numpy())
    penultimate = rel_l2(np.array(got.penultimate_hidden_state), out.hidden_states[-2].numpy())
    if projection:
        pooled = rel_l2(np.array(got.text_embeds), out.text_embeds.numpy())
    else:
        pooled = rel_l2(np.array(got.pooler_output), out.pooler_output.numpy())
    return hidden, penultimate, pooled


@pytest.mark.parametrize("family,pad,projection", [("openclip", "!", False), ("openai", "<|endoftext|>", False),
                                                   ("openclip", "!", True)])
def test_small_text_encoder_matches_transformers(tmp_path, family, pad, projection):
    errors = _compare(tmp_path, SMALL_TEXT_ENCODERS[family], pad, projection)
    assert max(errors) <= 1e-4, errors


@pytest.mark.slow
@pytest.mark.parametrize("model,component,pad", [("sdxs-512-0.9", "text_encoder", "!"),
                                                 ("sdxs-512-dreamshaper", "text_encoder", "<|endoftext|>"),
                                                 ("sdxl-turbo", "text_encoder", "<|endoftext|>"),
                                                 ("sdxl-turbo", "text_encoder_2", "!")])
def test_full_size_text_encoder_matches_transformers(tmp_path, model, component, pad):
    config = read_reference_config(model, component)
    projection = config["architectures"] == ["CLIPTextModelWithProjection"]
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version",
                                                            "vocab_size", "max_position_embeddings")}
    errors = _compare(tmp_path, config, pad, projection)
    print(f"full-size {model} {component}: relative L2 (last, penultimate, pooled) {errors}")
    assert max(errors) <= 1e-4, errors
