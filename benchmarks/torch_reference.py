"""The PyTorch reference for the benchmark: the same architecture and the same weights in diffusers.

Builds the model of a `random:NAME` architecture with diffusers / transformers (random weights),
saves it as a diffusers checkpoint that mlx-musicviz converts, and times the same components the
same way (median of N runs after a warm-up, float32, torch's default threads).
Needs the `dev` extra (torch, diffusers, transformers).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlx_musicviz  # noqa: F401  (optimized BLAS before mlx)
from mlx_musicviz.benchmark import median_time as median
from mlx_musicviz.models.tokenizer import BUNDLED_VOCABULARY
from mlx_musicviz.random_models import random_configs

PROMPT_TOKENS = 77


def _clean(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "model_type")}


class TorchReference:
    def __init__(self, name: str, seed: int = 0):
        import torch
        from diffusers import AutoencoderTiny, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        if not name.startswith("random:"):
            raise SystemExit("the PyTorch reference builds random:NAME architectures; give --model random:NAME")
        configs, pad = random_configs(name[len("random:"):])
        torch.manual_seed(seed)
        self.torch = torch
        self.unet = UNet2DConditionModel.from_config(_clean(configs["unet"])).eval()
        te_config = _clean(configs["text_encoder"])
        te_config.pop("vocab_size", None)
        self.text_encoder = CLIPTextModel(CLIPTextConfig(**te_config)).eval()
        self.vae = AutoencoderTiny.from_config(_clean(configs["vae"])).eval()
        self.hidden = self.text_encoder.config.hidden_size
        self._tmp = Path(tempfile.mkdtemp(prefix="musicviz-bench-"))
        self.source = self._save(self._tmp / "diffusers", configs, pad)

    def _save(self, folder: Path, configs: dict, pad: str) -> Path:
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        tok = folder / "tokenizer"
        tok.mkdir(parents=True)
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(BUNDLED_VOCABULARY / f, tok / f)
        (tok / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
        (folder / "scheduler").mkdir()
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"]))
        return folder

    def time(self, batch: int, size: int, runs: int) -> dict:
        torch = self.torch

        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            latents = torch.randn(batch, self.unet.config.in_channels, size // 8, size // 8, generator=g)
            ids = torch.randint(0, 49407, (1, PROMPT_TOKENS), generator=g)
            emb = self.text_encoder(ids).last_hidden_state
            embs = emb.expand(batch, -1, -1)
            t = torch.tensor([999])
            noise = self.unet(latents, t, embs).sample
            unet = median(lambda: self.unet(latents, t, embs).sample, runs)
            vae = median(lambda: self.vae.decode(noise).sample, runs)
            frame = median(lambda: self.vae.decode(self.unet(latents, t, embs).sample).sample, runs)
            text = median(lambda: self.text_encoder(ids).last_hidden_state, runs)
        return {"unet": unet / batch, "vae": vae / batch, "frame": frame / batch, "text_encoder": text}

    def close(self):
        shutil.rmtree(self._tmp, ignore_errors=True)
