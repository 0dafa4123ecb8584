"""`train_lora`: LoRA fine-tuning of the UNet in MLX on a folder of images (the project's mel tiles, or any
pictures), written as a diffusers/PEFT LoRA file that `--lora`, `load_pipeline(loras=...)` and diffusers'
`load_lora_weights` read.

The objective is the standard denoising loss: for a training image's latents x0, a timestep t drawn
uniformly from the scheduler's 1000, and noise ε, the UNet sees x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε and
is asked for ε (or v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x0 for v-prediction models); the loss is the mean
squared error. Only the LoRA matrices learn (AdamW); the model stays frozen. Each step's images, timesteps
and noise come from (seed, step) alone, so a run resumed from a checkpoint ends with the same LoRA as one
never interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .errors import MusicvizError
from .files import atomic_output, check_output_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, as diffusers' LoRA scripts train
STATE_NAME = "state.safetensors"


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What a run learns from; a checkpoint resumes only a run with the same settings."""
    rank: int = 8
    steps: int = 500
    learning_rate: float = 1e-4
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    weight_decay: float = 1e-2

    def check(self) -> "TrainSettings":
        if not isinstance(self.rank, int) or not 1 <= self.rank <= 256:
            raise MusicvizError(f"the LoRA rank must be a whole number from 1 to 256, got {self.rank}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise MusicvizError(f"steps must be a whole number, 1 or more, got {self.steps}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1):
            raise MusicvizError(f"the learning rate must be between 0 and 1, got {self.learning_rate}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise MusicvizError(f"the batch size must be a whole number, 1 or more, got {self.batch_size}")
        if self.resolution < 64 or self.resolution % 64:
            raise MusicvizError(f"the resolution must be 64 pixels or a larger multiple of 64, got {self.resolution}")
        return self


@dataclasses.dataclass
class TrainResult:
    output: Path
    steps: int  # steps taken by this call (the rest came from a checkpoint)
    resumed_from: int
    losses: list[float]  # this call's training losses, one a step
    seconds: float


class LoRALinear(nn.Module):
    """A frozen linear layer plus the trainable low-rank update B A (PEFT's initialisation: A uniform in
    ±1/sqrt(in), B zero, so training starts from the model itself)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, rng: np.random.Generator):
        super().__init__()
        out_dim, in_dim = base.weight.shape
        bound = 1 / math.sqrt(in_dim)
        self.base = base
        self.lora_A = mx.array(rng.uniform(-bound, bound, (rank, in_dim)).astype(np.float32))
        self.lora_B = mx.zeros((out_dim, rank))
        self.scale = alpha / rank

    def __call__(self, x: mx.array) -> mx.array:
        return self.base(x) + ((x @ self.lora_A.T) @ self.lora_B.T) * self.scale


def add_lora(unet: nn.Module, rank: int, seed: int = 0, targets=TARGETS) -> list[str]:
    """Wrap the UNet's `targets` linear layers in `LoRALinear` (alpha = rank: scale 1), freeze the rest;
    returns the wrapped layers' paths (diffusers' names)."""
    rng = np.random.default_rng(seed)
    found = [(name, module) for name, module in unet.named_modules()
             if type(module) is nn.Linear and any(name == t or name.endswith("." + t) for t in targets)]
    if not found:
        raise MusicvizError(f"the UNet has no float linear layers named {', '.join(targets)} to train "
                            "(a quantized model cannot be trained: use its float checkpoint)")
    found.sort()
    unet.freeze()
    from mlx.utils import tree_unflatten

    unet.update_modules(tree_unflatten([(name, LoRALinear(m, rank, rank, rng)) for name, m in found]))
    unet.unfreeze(keys=["lora_A", "lora_B"])
    return [name for name, _ in found]


def lora_weights(unet: nn.Module) -> dict[str, mx.array]:
    """The trained matrices under diffusers/PEFT names: unet.PATH.lora_A.weight / lora_B.weight."""
    from mlx.utils import tree_flatten

    out = {}
    for key, value in tree_flatten(unet.trainable_parameters()):
        path, kind = key.rsplit(".", 1)
        out[f"unet.{path}.{kind}.weight"] = value
    return out


def denoising_loss(unet, latents: mx.array, noise: mx.array, timesteps: mx.array, embeds: mx.array,
                   alphas_cumprod: mx.array, prediction_type: str = "epsilon", added_cond=None) -> mx.array:
    """Mean squared error of the UNet's prediction for latents noised to `timesteps` (NHWC); `added_cond`:
    SDXL's (pooled embeddings, time ids), as the UNet takes them."""
    a = alphas_cumprod[timesteps][:, None, None, None]
    noisy = mx.sqrt(a) * latents + mx.sqrt(1 - a) * noise
    target = noise if prediction_type == "epsilon" else mx.sqrt(a) * noise - mx.sqrt(1 - a) * latents
    return mx.mean(mx.square(unet(noisy, timesteps, embeds, added_cond=added_cond) - target))


# -- the training images --------------------------------------------------------------------------------


def find_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise MusicvizError(f"{folder} does not exist")
    if not folder.is_dir():
        raise MusicvizError(f"{folder} is not a folder of images")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise MusicvizError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def _mel_preset(path: Path, info: dict) -> str | None:
    """A mel tile's parameters but its song's level (ref_db, max_value), as JSON; None for other images."""
    from .spectrogram import METADATA_KEY, MelParams

    meta = info.get(METADATA_KEY)
    if meta is None:
        return None
    try:
        params = json.loads(meta)
    except json.JSONDecodeError:
        raise MusicvizError(f"{path}: its {METADATA_KEY} metadata is not JSON") from None
    preset = {f.name for f in dataclasses.fields(MelParams)} - {"ref_db", "max_value"}
    return json.dumps({k: v for k, v in params.items() if k in preset}, sort_keys=True)


def load_images(paths: list[Path], resolution: int) -> np.ndarray:
    """float32 NHWC in [-1, 1], each resized (shorter side) and centre-cropped to resolution²; mel tiles
    of different parameters are refused."""
    from PIL import Image, UnidentifiedImageError

    out, presets = [], {}
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                preset = _mel_preset(path, image.info)
                image = image.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise MusicvizError(f"{path} is not a readable image ({type(e).__name__})") from None
        if preset is not None:
            presets.setdefault(preset, path)
        w, h = image.size
        k = resolution / min(w, h)
        image = image.resize((max(resolution, round(w * k)), max(resolution, round(h * k))), Image.BICUBIC)
        left, top = (image.size[0] - resolution) // 2, (image.size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        out.append(np.asarray(image, np.float32) / 127.5 - 1)
    if len(presets) > 1:
        a, b = list(presets.values())[:2]
        raise MusicvizError(f"tiles of mixed presets: {a.name} and {b.name} were made with different mel "
                            "parameters; train on tiles of one preset")
    return np.stack(out)


def read_captions(paths: list[Path], prompt: str | None, captions) -> list[str]:
    """One caption an image: `prompt` for all, or `captions`, a JSON file {image file name: caption}."""
    if (prompt is None) == (captions is None):
        raise MusicvizError("give a prompt for every image or a captions file, one of the two")
    if prompt is not None:
        if not str(prompt).strip():
            raise MusicvizError("the prompt is empty")
        return [prompt] * len(paths)
    from .models.configs import read_json

    table = read_json(Path(captions))
    if not isinstance(table, dict):
        raise MusicvizError(f"{captions} must be a JSON object of image file name -> caption")
    missing = [p.name for p in paths if not (isinstance(table.get(p.name), str) and table[p.name].strip())]
    if missing:
        raise MusicvizError(f"{captions} has no caption for {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return [str(table[p.name]) for p in paths]


# -- checkpoints ----------------------------------------------------------------------------------------


def checkpoint_folder(output: Path) -> Path:
    """Where an unfinished run keeps its state: a hidden folder beside the output."""
    return output.parent / f".{output.name}.train"


def _fingerprint(pipe, settings: TrainSettings, paths: list[Path], pixels: np.ndarray, captions: list[str]) -> str:
    digest = hashlib.sha256()
    # not the number of steps: a step's draws depend on (seed, step) only, so a run may be resumed longer
    kept = {k: v for k, v in dataclasses.asdict(settings).items() if k != "steps"}
    digest.update(json.dumps([str(pipe.record.get("source")), pipe.record.get("revision"), pipe.record.get("loras"),
                              pipe.record.get("scheduler"), kept, captions], sort_keys=True, default=str).encode())
    for path in paths:
        digest.update(path.name.encode())
    digest.update(pixels.tobytes())  # the images as trained on, already read
    return digest.hexdigest()


def _save_state(folder: Path, unet, optimizer, step: int, fingerprint: str) -> None:
    from mlx.utils import tree_flatten

    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"lora/{k}": v for k, v in tree_flatten(unet.trainable_parameters())}
    arrays.update({f"adam/{k}": v for k, v in tree_flatten(optimizer.state)})
    with atomic_output(folder / STATE_NAME) as tmp:
        mx.save_safetensors(tmp, arrays, {"step": str(step), "fingerprint": fingerprint})


def _load_state(folder: Path, unet, optimizer, fingerprint: str) -> int:
    """The step a kept state reached (its LoRA and optimizer loaded), or 0 (with a warning where a kept
    state cannot serve)."""
    from mlx.utils import tree_unflatten

    path = folder / STATE_NAME
    if not path.exists():
        return 0
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
    except Exception:
        warnings.warn(f"the training state kept in {folder} is damaged: starting over", stacklevel=3)
        return 0
    if meta.get("fingerprint") != fingerprint:
        warnings.warn(f"the training state kept in {folder} (step {meta.get('step')}) is of other images, "
                      "captions, model or settings: starting over", stacklevel=3)
        return 0
    unet.update(tree_unflatten([(k[5:], v) for k, v in arrays.items() if k.startswith("lora/")]))
    optimizer.state = tree_unflatten([(k[5:], v) for k, v in arrays.items() if k.startswith("adam/")])
    return int(meta["step"])


def save_lora(path: Path, unet, info: dict) -> None:
    """The LoRA in diffusers/PEFT form (float32), with what made it in the metadata."""
    metadata = {"format": "pt", "musicviz-train": json.dumps(info, sort_keys=True)}
    with atomic_output(path) as tmp:
        mx.save_safetensors(tmp, lora_weights(unet), metadata)


# -- the run --------------------------------------------------------------------------------------------


def train_lora(images, output, model="IDKiro/sdxs-512-0.9", *, prompt: str | None = None, captions=None, rank: int = 8,
               steps: int = 500, learning_rate: float = 1e-4, batch_size: int = 1, resolution: int = 512,
               seed: int = 0, save_every: int = 50, resume: bool = True, progress=None, log=None,
               pipeline=None) -> TrainResult:
    """Train a LoRA of `model`'s UNet on the images in the folder `images`; write it to `output`
    (.safetensors, diffusers/PEFT form).

    prompt / captions: the text for every image, or a JSON file {image file name: caption}.
    rank: the LoRA's rank (alpha = rank). steps: optimizer steps of `batch_size` images.
    resolution: the training side in pixels (images are resized and centre-cropped).
    save_every: steps between checkpoints, kept in a hidden folder beside `output` until the LoRA is
        written; the same call again resumes from the last one (resume=False starts over).
    progress: called as progress(step, steps, loss) after every step; log: called with a line on what
        the run trains on and where it starts.
    Bad input is one MusicvizError line; nothing is left at `output` unless training finished.
    """
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten, tree_unflatten

    from .loading import load_pipeline
    from .ops import differentiable
    from .scheduler import alphas_cumprod

    t0 = time.perf_counter()
    settings = TrainSettings(rank, steps, learning_rate, batch_size, resolution, seed).check()
    if not isinstance(save_every, int) or save_every < 1:
        raise MusicvizError(f"save_every must be a whole number of steps, 1 or more, got {save_every}")
    output = check_output_path(output, "lora.safetensors")
    if output.suffix != ".safetensors":
        raise MusicvizError(f"the LoRA is written as .safetensors, not {output.suffix or 'a file without a suffix'}")
    paths = find_images(images)
    texts = read_captions(paths, prompt, captions)
    pixels = load_images(paths, resolution)
    pipe = pipeline or load_pipeline(model)
    if pipe.is_random:
        from .rendering import RANDOM_WEIGHTS_WARNING

        warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)
    if pipe.quantization:
        raise MusicvizError("a quantized model cannot be trained: use its float checkpoint")
    with differentiable():  # mlx's own operations throughout: the CPU fast paths have no gradients
        latents = mx.concatenate([pipe.encode_images(mx.array(pixels[i:i + 4])) for i in range(0, len(pixels), 4)])
        unique = sorted(set(texts))
        table, pooled = pipe.split_prompt_embeds(pipe.encode_prompt(unique))  # pooled: SDXL's, else None
        rows = mx.array([unique.index(t) for t in texts])
        embeds, pooled = table[rows], (None if pooled is None else pooled[rows])
        mx.eval(latents, embeds, pooled)
        layers = add_lora(pipe.unet, rank, seed)
        fresh = tree_flatten(pipe.unet.trainable_parameters())  # the LoRA before any step
        fingerprint = _fingerprint(pipe, settings, paths, pixels, texts)
        optimizer = optim.AdamW(learning_rate=learning_rate, weight_decay=settings.weight_decay)
        optimizer.init(pipe.unet.trainable_parameters())
        folder = checkpoint_folder(output)
        start = _load_state(folder, pipe.unet, optimizer, fingerprint) if resume else 0
        if start > steps:
            warnings.warn(f"the training state kept in {folder} is at step {start}, past the {steps} asked for: "
                          "starting over", stacklevel=2)
            pipe.unet.update(tree_unflatten(fresh))
            optimizer = optim.AdamW(learning_rate=learning_rate, weight_decay=settings.weight_decay)
            optimizer.init(pipe.unet.trainable_parameters())
            start = 0
        if log is not None:
            log(f"training {len(layers)} layers on {len(paths)} images at {resolution}²"
                + (f"; resuming at step {start} of {steps} from {folder}" if start else ""))
        ac = mx.array(alphas_cumprod(pipe.scheduler.config))
        prediction = pipe.scheduler.prediction_type
        time_ids = mx.array([[resolution, resolution, 0, 0, resolution, resolution]] * batch_size, dtype=mx.float32)
        loss_and_grad = nn.value_and_grad(pipe.unet, lambda x0, eps, t, emb, cond: denoising_loss(
            pipe.unet, x0, eps, t, emb, ac, prediction, cond))
        losses, kept = [], start
        try:
            for step in range(start, steps):
                rng = np.random.default_rng([seed, step])
                pick = mx.array(rng.integers(0, len(paths), batch_size))
                t = mx.array(rng.integers(0, len(ac), batch_size))
                eps = mx.array(rng.standard_normal((batch_size, *latents.shape[1:])).astype(np.float32))
                cond = None if pooled is None else (pooled[pick], time_ids)  # SDXL: the image size, uncropped
                loss, grads = loss_and_grad(latents[pick], eps, t, embeds[pick], cond)
                optimizer.update(pipe.unet, grads)
                mx.eval(pipe.unet.trainable_parameters(), optimizer.state, loss)
                losses.append(loss.item())
                if not math.isfinite(losses[-1]):
                    raise MusicvizError(f"the loss became {losses[-1]} at step {step + 1}: lower the learning rate")
                if (step + 1) % save_every == 0 and step + 1 < steps:
                    _save_state(folder, pipe.unet, optimizer, step + 1, fingerprint)
                    kept = step + 1
                if progress is not None:
                    progress(step + 1, steps, losses[-1])
        except BaseException as e:
            if kept:
                e.add_note(f"the state at step {kept} of {steps} is kept in {folder}: the same command resumes from it")
            raise
    info = {"model": str(pipe.record.get("source")), "images": len(paths), **dataclasses.asdict(settings),
            "layers": len(layers)}
    save_lora(output, pipe.unet, info)
    if folder.exists():
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return TrainResult(output, steps - start, start, losses, time.perf_counter() - t0)


__all__ = ["TrainResult", "TrainSettings", "add_lora", "denoising_loss", "train_lora"]
