"""The PyTorch reference for the benchmark: the same architecture and the same weights in diffusers.

`TorchReference` (used by `musicviz-mlx bench`, needs the `dev` extra) builds the model of a
`random:NAME` architecture with diffusers / transformers (random weights), saves it as a diffusers
checkpoint that mlx-musicviz converts, and times the same components the same way: median of N
runs after a warm-up, float32, torch's default threads.

The PyTorch side runs in a child process of its own, this file run as a script. In the benchmark's
process mlx_musicviz has put OpenBLAS into the global symbol scope (see mlx_musicviz/_blas.py),
and torch's own `sgemm_` calls would bind to it too: measured on the 2-core benchmark VM, that
alone made the PyTorch UNet 2x slower (2.5 s alone, 4.6-5.6 s beside mlx_musicviz). The child
imports neither mlx nor mlx_musicviz, and reports the BLAS libraries mapped into it so the
benchmark can show that the reference ran clean.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT_TOKENS = 77


class TorchReference:
    """Build, save and time the PyTorch reference in a clean child process, once.

    `source`: the saved diffusers checkpoint (the same weights, for mlx-musicviz to convert);
    `time(batch)`: seconds per image (UNet, VAE decode, frame) and per prompt (text encoder, given
    `batch` prompts at once);
    `matmul_gflops`: torch's float32 2048^3 matmul rate in the child; `info`: torch version,
    threads, and the BLAS libraries mapped into the child.
    """

    def __init__(self, name: str, size: int, batches: tuple[int, ...], runs: int, seed: int = 0):
        from mlx_musicviz.errors import MusicvizError
        from mlx_musicviz.models.tokenizer import BUNDLED_VOCABULARY
        from mlx_musicviz.random_models import random_configs

        if not name.startswith("random:"):
            raise MusicvizError("the PyTorch reference builds random:NAME architectures; give --model random:NAME")
        configs, pad = random_configs(name[len("random:"):])
        self._tmp = Path(tempfile.mkdtemp(prefix="musicviz-bench-"))
        job = {"configs": configs, "pad": pad, "vocabulary": str(BUNDLED_VOCABULARY), "folder": str(self._tmp / "diffusers"),
               "size": size, "batches": list(batches), "runs": runs, "seed": seed}
        (self._tmp / "job.json").write_text(json.dumps(job))
        # The child must not load the optimized BLAS (it would not import mlx_musicviz anyway; belt and braces).
        env = {**os.environ, "MLX_MUSICVIZ_BLAS": "0", "MLX_MUSICVIZ_MALLOC": "0"}
        child = subprocess.run([sys.executable, __file__, str(self._tmp / "job.json")], env=env,
                               capture_output=True, text=True)
        if child.returncode != 0:
            self.close()
            last = (child.stderr.strip().splitlines() or ["no output"])[-1]
            raise MusicvizError(f"the PyTorch reference failed: {last}")
        out = json.loads((self._tmp / "result.json").read_text())
        self.source = Path(job["folder"])
        self._times = {int(b): t for b, t in out["times"].items()}
        self.matmul_gflops = out["matmul_gflops"]
        self.info = out["info"]

    def time(self, batch: int) -> dict:
        return self._times[batch]

    def close(self):
        shutil.rmtree(self._tmp, ignore_errors=True)


# ---- the child process: torch, diffusers and transformers only ----

def _load_median_time():
    """mlx_musicviz/timing.py's median_time, loaded by path: importing the package would load mlx."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "mlx_musicviz" / "timing.py"
    spec = importlib.util.spec_from_file_location("musicviz_timing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.median_time


def _clean(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "model_type")}


def _mapped_blas() -> list[str]:
    """Shared libraries with 'blas' in their name mapped into this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "blas" in line.rsplit("/", 1)[-1].lower()}
    except OSError:
        return []
    return sorted(paths)


def _child(job_path: Path) -> None:
    import torch
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    job = json.loads(job_path.read_text())
    configs, folder = job["configs"], Path(job["folder"])
    torch.manual_seed(job["seed"])
    unet = UNet2DConditionModel.from_config(_clean(configs["unet"])).eval()
    te_config = _clean(configs["text_encoder"])
    te_config.pop("vocab_size", None)
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_config)).eval()
    vae = AutoencoderTiny.from_config(_clean(configs["vae"])).eval()

    unet.save_pretrained(folder / "unet", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    (folder / "tokenizer").mkdir(parents=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(Path(job["vocabulary"]) / f, folder / "tokenizer" / f)
    (folder / "tokenizer" / "special_tokens_map.json").write_text(json.dumps({"pad_token": job["pad"]}))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"]))

    _median = _load_median_time()
    runs, size = job["runs"], job["size"]
    times = {}
    with torch.no_grad():
        a = torch.randn(2048, 2048)
        matmul = 2 * 2048**3 / _median(lambda: a @ a, 5) / 1e9
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 49407, (1, PROMPT_TOKENS), generator=g)
        emb = text_encoder(ids).last_hidden_state
        t = torch.tensor([999])
        for batch in job["batches"]:
            latents = torch.randn(batch, unet.config.in_channels, size // 8, size // 8, generator=g)
            embs = emb.expand(batch, -1, -1)
            prompts = ids.expand(batch, -1)
            text = _median(lambda: text_encoder(prompts).last_hidden_state, runs) / batch
            noise = unet(latents, t, embs).sample
            unet_s = _median(lambda: unet(latents, t, embs).sample, runs)
            vae_s = _median(lambda: vae.decode(noise).sample, runs)
            frame = _median(lambda: vae.decode(unet(latents, t, embs).sample).sample, runs)
            times[batch] = {"unet": unet_s / batch, "vae": vae_s / batch, "frame": frame / batch, "text_encoder": text}
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "blas_libraries": _mapped_blas(),
            "mlx_imported": "mlx.core" in sys.modules}
    (job_path.parent / "result.json").write_text(json.dumps({"times": times, "matmul_gflops": matmul, "info": info}))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
