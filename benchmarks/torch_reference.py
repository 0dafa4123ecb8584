"""The PyTorch reference for the benchmark: the same architecture and the same weights in diffusers.

`TorchReference` (used by `musicviz-mlx bench`, needs the `dev` extra) builds the model of a
`random:NAME` architecture with diffusers / transformers (random weights), saves it as a diffusers
checkpoint that mlx-musicviz converts, and times the same components on the same inputs, one call
at a time when the benchmark asks (float32, torch's default threads), so the benchmark can take
turns with its MLX calls: both sides see the same state of a shared machine. On a GPU machine it
runs on the GPU ("cuda" or "mps", as the benchmark asks), every timed call ending in a
synchronization, with TF32 matmuls and convolutions allowed exactly when mlx allows them.

The PyTorch side runs in a child process of its own, this file run as a script, that waits for
requests on stdin and answers on stdout. In the benchmark's
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
import time
from functools import partial
from pathlib import Path

PROMPT_TOKENS = 77


class TorchReference:
    """Build and save the PyTorch reference in a child process that stays alive to time it.

    `source`: the saved diffusers checkpoint (the same weights, for mlx-musicviz to convert);
    `time(component, batch)`: seconds of one call of "text_encoder" (`batch` prompts), "unet",
    "vae" (decode with the tiny VAE, or with the large one, `vae_large/`, when `vae` is "large")
    or "frame" (UNet + decode) on `batch` images, run in the child when asked, so
    the benchmark can interleave these calls with its MLX calls (the first call of each is the
    caller's warm-up);
    `matmul_gflops`: torch's float32 matmul rate in the child (2048^3 on the CPU, the best of
    4096^3 and 8192^3 on a GPU); `info`: torch version, threads, the BLAS libraries mapped into the
    child, the class of the VAE it times, the device (and on a GPU its name and whether TF32 is on).
    `device`: "cpu", "cuda" or "mps"; `tf32`: allow TF32 there (mlx's setting, to compare like with like).
    """

    def __init__(self, name: str, size: int, seed: int = 0, vae: str = "auto", device: str = "cpu",
                 tf32: bool = False):
        from mlx_musicviz.errors import MusicvizError
        from mlx_musicviz.models.tokenizer import BUNDLED_VOCABULARY
        from mlx_musicviz.random_models import random_configs

        if not name.startswith("random:"):
            raise MusicvizError("the PyTorch reference builds random:NAME architectures; give --model random:NAME, or "
                                "--no-reference to time this model without PyTorch")
        configs, pads = random_configs(name[len("random:"):])
        tiny = configs["vae"]["_class_name"] == "AutoencoderTiny"  # SDXS; else the model's vae/ is its KL VAE
        vae = ("tiny" if tiny else "large") if vae == "auto" else vae
        if vae == "large" and tiny and "vae_large" not in configs:
            raise MusicvizError(f"{name} has no large VAE")
        if vae == "tiny" and not tiny:
            raise MusicvizError(f"{name} has no tiny VAE")
        self._tmp = Path(tempfile.mkdtemp(prefix="musicviz-bench-"))
        job = {"configs": configs, "pads": pads, "vocabulary": str(BUNDLED_VOCABULARY), "folder": str(self._tmp / "diffusers"),
               "size": size, "seed": seed, "vae": vae, "device": device, "tf32": tf32}
        (self._tmp / "job.json").write_text(json.dumps(job))
        # The child must not load the optimized BLAS (it would not import mlx_musicviz anyway; belt and braces).
        env = {**os.environ, "MLX_MUSICVIZ_BLAS": "0", "MLX_MUSICVIZ_MALLOC": "0"}
        self._log = open(self._tmp / "child.log", "w+")  # noqa: SIM115 - the child writes to it until close()
        self._child = subprocess.Popen([sys.executable, __file__, str(self._tmp / "job.json")], env=env, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        ready = self._reply()
        self.source = Path(job["folder"])
        self.matmul_gflops = ready["matmul_gflops"]
        self.info = ready["info"]

    def time(self, component: str, batch: int) -> float:
        self._child.stdin.write(json.dumps({"component": component, "batch": batch}) + "\n")
        self._child.stdin.flush()
        return self._reply()["seconds"]

    def time_layer(self, spec: dict, burst: int = 1) -> float:
        """Seconds of one call of a layer shape on random inputs: `spec` as `layer_shapes` gives it
        (kind "conv" or "linear", input shape (NHWC for convolutions), weight shape (O, kh, kw, C) or
        (O, K), stride, padding, upsample, bias), run as torch runs it in diffusers (convolutions
        NCHW, an upsampler's after F.interpolate); one untimed call, then the median of `burst` calls."""
        self._child.stdin.write(json.dumps(layer_request(spec, burst)) + "\n")
        self._child.stdin.flush()
        return self._reply()["seconds"]

    def profile(self, component: str, batch: int) -> dict[str, float]:
        """One call of `component` on `batch` images under torch.profiler: seconds by kind of work
        (`torch_kind` of each operator's self time; "other" is the rest of the call) and "total"."""
        self._child.stdin.write(json.dumps({"profile": component, "batch": batch}) + "\n")
        self._child.stdin.flush()
        return self._reply()["seconds"]

    def _reply(self) -> dict:
        from mlx_musicviz.errors import MusicvizError

        line = self._child.stdout.readline()
        if not line:  # the child died: its last line of stderr says why
            self._child.wait()
            self._log.seek(0)
            last = (self._log.read().strip().splitlines() or ["no output"])[-1]
            self.close()
            raise MusicvizError(f"the PyTorch reference failed: {last}")
        return json.loads(line)

    def close(self):
        if self._child.poll() is None:
            self._child.stdin.close()
            try:
                self._child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        self._log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


LAYER_KEYS = ("kind", "input", "weight", "stride", "padding", "upsample", "bias")  # what `_layer_call` reads


def layer_request(spec: dict, burst: int) -> dict:
    """The request line (as JSON) that asks the child to time a layer of `spec`'s shape."""
    return {"layer": {k: spec[k] for k in LAYER_KEYS if k in spec}, "burst": burst}


# Operators by kind of work, as the benchmark's MLX profile counts them (mlx_musicviz.benchmark.PROFILE_KINDS).
# An upsampler's nearest upsampling counts with its convolution: MLX's computes both at once.
TORCH_KINDS = {
    "convolution": ("aten::conv2d", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution",
                    "aten::_slow_conv2d_forward", "aten::thnn_conv2d", "aten::upsample_nearest2d",
                    "aten::cudnn_convolution"),
    "linear": ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "aten::t"),
    "attention core": ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                       "aten::_scaled_dot_product_attention_math", "aten::baddbmm", "aten::bmm", "aten::softmax",
                       "aten::_softmax", "aten::_scaled_dot_product_flash_attention",
                       "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
                       "aten::_flash_attention_forward", "aten::_efficient_attention_forward"),
    "norm and activation": ("aten::group_norm", "aten::native_group_norm", "aten::layer_norm",
                            "aten::native_layer_norm", "aten::gelu", "aten::silu", "aten::relu", "aten::clamp_min",
                            "aten::tanh"),
}


def torch_kind(operator: str) -> str:
    """The kind of work a torch.profiler operator name does ("other" for any not listed)."""
    return next((kind for kind, names in TORCH_KINDS.items() if operator in names), "other")


# ---- the child process: torch, diffusers and transformers only ----

def _load_timing():
    """mlx_musicviz/timing.py (median_time, call_seconds), loaded by path: importing the package would load mlx."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "mlx_musicviz" / "timing.py"
    spec = importlib.util.spec_from_file_location("musicviz_timing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _layer_call(spec: dict, torch, device: str = "cpu"):
    """A function that runs one layer of `spec`'s shape (see TorchReference.time_layer) on random
    inputs on `device`; it returns when the work is done (on a GPU, after a synchronization)."""
    import torch.nn.functional as F

    o = spec["weight"][0]
    randn = partial(torch.randn, device=device)
    bias = randn(o) * 0.05 if spec["bias"] else None
    if spec["kind"] == "conv":
        n, h, w, c = spec["input"]
        _, kh, kw, _ = spec["weight"]
        x, weight = randn(n, c, h, w), randn(o, c, kh, kw) * 0.05
        conv = partial(F.conv2d, weight=weight, bias=bias, stride=tuple(spec["stride"]), padding=tuple(spec["padding"]))
        if spec.get("upsample"):  # as diffusers' Upsample2D and TAESD's decoder: nearest, then the convolution
            return _synced(lambda: conv(F.interpolate(x, scale_factor=spec["upsample"], mode="nearest")), torch, device)
        return _synced(partial(conv, x), torch, device)
    x, weight = randn(*spec["input"]), randn(*spec["weight"]) * 0.05
    return _synced(partial(F.linear, x, weight, bias), torch, device)


def _synchronize(torch, device: str):
    """The function that waits for `device`'s queued work (nothing to wait for on the CPU)."""
    if device == "cuda":
        return torch.cuda.synchronize
    if device == "mps":
        return torch.mps.synchronize
    return lambda: None


def _synced(fn, torch, device: str):
    """`fn`, returning only when the work it queued on `device` is done (GPU calls return early)."""
    sync = _synchronize(torch, device)

    def call(*args):
        out = fn(*args)
        sync()
        return out

    return call


def _use_device(torch, device: str, tf32: bool) -> str:
    """Check that torch can run on `device` and set TF32 there; the device's name."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("torch sees no CUDA GPU (mlx runs on one): install a CUDA build of torch")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        return torch.cuda.get_device_name()
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise SystemExit("torch sees no Metal GPU (mlx runs on one)")
        return "mps"
    return "cpu"


def _child(job_path: Path) -> None:
    # Replies go to the parent on the original stdout; anything a library prints goes to stderr.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    job = json.loads(job_path.read_text())
    configs, folder = job["configs"], Path(job["folder"])
    device, tf32 = job.get("device", "cpu"), job.get("tf32", False)
    device_name = _use_device(torch, device, tf32)
    torch.manual_seed(job["seed"])
    unet = UNet2DConditionModel.from_config(_clean(configs["unet"])).eval()
    encoders = {}  # component -> model: SDXL has a second text encoder, with a projection
    for part, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        if part in configs:
            te_config = _clean(configs[part])
            te_config.pop("vocab_size", None)
            encoders[part] = cls(CLIPTextConfig(**te_config)).eval()
    vae_class = AutoencoderTiny if configs["vae"]["_class_name"] == "AutoencoderTiny" else AutoencoderKL
    vae = vae_class.from_config(_clean(configs["vae"])).eval()

    unet.save_pretrained(folder / "unet", safe_serialization=True)
    for part, encoder in encoders.items():
        encoder.save_pretrained(folder / part, safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    if job["vae"] == "large" and vae_class is AutoencoderTiny:  # the VAE that "vae" and "frame" time
        vae = AutoencoderKL.from_config(_clean(configs["vae_large"])).eval()
        vae.save_pretrained(folder / "vae_large", safe_serialization=True)
    scale = vae.config.scaling_factor  # decode as the pipeline does: latents / scaling factor
    unet, vae = unet.to(device), vae.to(device)  # saved first, from the CPU
    encoders = {part: encoder.to(device) for part, encoder in encoders.items()}
    for tokenizer, pad in job["pads"].items():
        (folder / tokenizer).mkdir(parents=True)
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(Path(job["vocabulary"]) / f, folder / tokenizer / f)
        (folder / tokenizer / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"]))

    size = job["size"]
    g = torch.Generator().manual_seed(1)  # on the CPU: the same inputs whatever the device
    t = torch.tensor([999], device=device)
    inputs = {}  # batch -> (latents, prompt ids, embeddings, UNet output)

    def encode(ids):
        """The UNet's conditioning, as the diffusers pipelines make it: (embeddings, UNet keywords)."""
        if "text_encoder_2" not in encoders:
            return encoders["text_encoder"](ids).last_hidden_state, {}
        first = encoders["text_encoder"](ids, output_hidden_states=True).hidden_states[-2]
        second = encoders["text_encoder_2"](ids, output_hidden_states=True)
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32, device=device)
        added = {"text_embeds": second.text_embeds, "time_ids": time_ids.expand(ids.shape[0], -1)}
        return torch.cat([first, second.hidden_states[-2]], dim=-1), {"added_cond_kwargs": added}

    def batch_inputs(batch: int):
        if batch not in inputs:
            ids = torch.randint(0, 49407, (1, PROMPT_TOKENS), generator=g).expand(batch, -1).to(device)
            latents = torch.randn(batch, unet.config.in_channels, size // 8, size // 8, generator=g).to(device)
            cond = encode(ids)
            inputs[batch] = (latents, ids, cond, unet(latents, t, cond[0], **cond[1]).sample)
        return inputs[batch]

    calls = {"text_encoder": lambda latents, ids, cond, noise: encode(ids),
             "unet": lambda latents, ids, cond, noise: unet(latents, t, cond[0], **cond[1]).sample,
             "vae": lambda latents, ids, cond, noise: vae.decode(noise / scale).sample,
             "frame": lambda latents, ids, cond, noise: vae.decode(unet(latents, t, cond[0], **cond[1]).sample
                                                                   / scale).sample}
    calls = {name: _synced(call, torch, device) for name, call in calls.items()}
    with torch.no_grad():
        timing = _load_timing()
        matmul = 0.0
        for n in (2048,) if device == "cpu" else (4096, 8192):  # a GPU needs larger products to fill
            a = torch.randn(n, n, device=device)
            matmul = max(matmul, 2 * n**3 / timing.median_time(_synced(lambda a=a: a @ a, torch, device), 5) / 1e9)
        info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "blas_libraries": _mapped_blas(),
                "mlx_imported": "mlx.core" in sys.modules, "vae": type(vae).__name__, "device": device,
                "device_name": device_name, "tf32": tf32 and device != "cpu"}
        replies.write(json.dumps({"matmul_gflops": matmul, "info": info}) + "\n")
        layers = {}  # a layer request's JSON -> its call on inputs made once
        for line in sys.stdin:  # one request a line, until the parent closes stdin
            request = json.loads(line)
            if "profile" in request:
                seconds = _profile(partial(calls[request["profile"]], *batch_inputs(request["batch"])), torch, device)
            elif "layer" in request:
                key = json.dumps(request["layer"], sort_keys=True)
                if key not in layers:
                    layers[key] = _layer_call(request["layer"], torch, device)
                seconds = timing.median_time(layers[key], request.get("burst", 1))
            else:
                seconds = timing.call_seconds(partial(calls[request["component"]], *batch_inputs(request["batch"])))
            replies.write(json.dumps({"seconds": seconds}) + "\n")


def _profile(call, torch, device: str = "cpu") -> dict[str, float]:
    """Seconds of one call of `call` by `torch_kind`, from torch.profiler's self time per operator
    (an operator's time less that of the operators it calls; its intra-op threads' work is inside
    it; on a CUDA GPU, the time of the kernels it launched itself), "other" the rest of the call's
    wall time, and "total"."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        start = time.perf_counter()
        call()
        total = time.perf_counter() - start
    seconds = dict.fromkeys(TORCH_KINDS, 0.0)
    for event in prof.key_averages():
        kind = torch_kind(event.key)
        if kind != "other":
            seconds[kind] += (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e6
    return {**seconds, "other": total - sum(seconds.values()), "total": total}


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
