"""LoRA files fused into a pipeline's float weights: W += scale * (alpha / rank) * up @ down.

Two file formats, both safetensors:
- diffusers / PEFT (`save_lora_weights`): `unet.<module>.lora_A.weight` (down) and `.lora_B.weight` (up),
  `text_encoder.<module>...` (or `.lora_linear_layer.down.weight` / `.up.weight`, as diffusers converts
  a text encoder's PEFT layers); alpha from the file's `lora_adapter_metadata` (`<component>.lora_alpha`,
  `alpha_pattern`, `use_rslora`), else alpha = rank. Older files name them `.lora.down.weight` and
  `.lora.up.weight`.
- kohya / A1111: `lora_unet_<module with _ for .>.lora_down.weight`, `.lora_up.weight` and `.alpha`;
  `lora_te_` (or `lora_te1_`) for the text encoder, `lora_te2_` for SDXL's second one
  (`text_encoder_2.` in diffusers files). SDXL files from kohya's scripts name the UNet's layers in the
  SGM/LDM layout (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`); both layouts are read.
Linear and convolution layers (LoCon) both fuse. Module names are diffusers', as the models here use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from .errors import MusicvizError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
MAX_SCALE = 100.0  # |scale|: LoRAs are used at about 0 to 2; far beyond, the weights overflow into black frames
# key suffix -> what it holds
_SUFFIXES = ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_down.weight", "down"),
             (".lora_up.weight", "up"), (".lora.down.weight", "down"), (".lora.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
             (".lora_linear_layer.up.weight", "up"), (".alpha", "alpha"))
# key prefix -> (component, whether module names use _ for .)
_PREFIXES = (("unet.", "unet", False), ("text_encoder.", "text_encoder", False),
             ("text_encoder_2.", "text_encoder_2", False), ("lora_unet_", "unet", True),
             ("lora_te1_", "text_encoder", True), ("lora_te2_", "text_encoder_2", True), ("lora_te_", "text_encoder", True))


@dataclass
class LoraLayer:
    down: np.ndarray  # (rank, in) or (rank, in, kh, kw)
    up: np.ndarray  # (out, rank) or (out, rank, 1, 1)
    scale: float  # alpha / rank (or alpha / sqrt(rank) for rsLoRA)

    def delta(self) -> np.ndarray:
        """The weight change (out, in) or (out, in, kh, kw), in float32."""
        up = self.up.reshape(self.up.shape[0], -1).astype(np.float32)
        down = self.down.reshape(self.down.shape[0], -1).astype(np.float32)
        return (self.scale * (up @ down)).reshape((up.shape[0],) + self.down.shape[1:])


def parse_lora(text: str) -> tuple[str, float]:
    """`PATH[:SCALE]` (a command-line `--lora`) -> (path, scale); scale 1 when not given."""
    path, sep, scale = str(text).rpartition(":")
    if not sep or os.path.exists(text) or "/" in scale or "\\" in scale:
        return str(text), 1.0
    try:
        value = float(scale)
    except ValueError:
        raise MusicvizError(f"LoRA scale must be a number, got {scale!r} in {text!r} (PATH or PATH:SCALE)") from None
    if not np.isfinite(value):
        raise MusicvizError(f"LoRA scale must be a finite number, got {scale!r}")
    return path, value


def lora_argument(lora) -> tuple[str | os.PathLike, float]:
    """(path, scale) of one of `load_pipeline`'s loras: a path, "PATH:SCALE" or a (path, scale) pair."""
    if isinstance(lora, str):
        return parse_lora(lora)
    if isinstance(lora, os.PathLike):
        return lora, 1.0
    if isinstance(lora, (tuple, list)) and len(lora) == 2:
        return lora[0], lora[1]
    raise MusicvizError(f"a LoRA is a path, 'PATH:SCALE' or a (path, scale) pair, not {lora!r:.60}")


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(float32 tensors, header metadata) of a safetensors file."""
    if path.is_dir():
        raise MusicvizError(f"{path} is a folder: name the LoRA's .safetensors file in it")
    if not path.is_file():
        raise MusicvizError(f"LoRA file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise MusicvizError(f"{path} is not a .safetensors file (LoRAs are read from safetensors only)")
    try:
        weights, metadata = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise MusicvizError(f"{path} is not a readable safetensors LoRA file ({str(e).splitlines()[0]})") from None
    return {k: np.array(v.astype(mx.float32)) for k, v in weights.items()}, dict(metadata or {})


def _split(key: str, path) -> tuple[str, str, bool, str, str]:
    """(component, module, underscored, kind, key) of one tensor's key in the file `path`; raises on a key
    of no known form."""
    for prefix, component, underscored in _PREFIXES:
        if key.startswith(prefix):
            for suffix, kind in _SUFFIXES:
                if key.endswith(suffix):
                    module = key[len(prefix):-len(suffix)].removesuffix(".processor")
                    return component, module, underscored, kind, key
    raise MusicvizError(f"{path}: not a LoRA key this project reads (diffusers/PEFT or kohya format): {key}")


def _alpha(metadata: dict, component: str, module: str) -> tuple[float | None, bool]:
    """(alpha from the diffusers metadata or None, whether it is rsLoRA) of one module."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None, False
    config = {k[len(component) + 1:]: v for k, v in json.loads(raw).items() if k.startswith(component + ".")}
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return float(alpha), bool(config.get("use_rslora"))
    alpha = config.get("lora_alpha")
    return (float(alpha) if alpha is not None else None), bool(config.get("use_rslora"))


def _aliases(names, underscored: bool) -> dict[str, str]:
    """Other names of the layers `names` in LoRA files -> theirs: without the CLIP text encoder's
    `text_model.` (as transformers 5 saves it), with _ for . (kohya), and a UNet's in the SGM layout
    (kohya's SDXL files)."""
    table = {}
    sgm = sgm_names(names) if underscored else {}
    for name in names:
        for alias in (name, name.removeprefix("text_model."), sgm.get(name, name)):
            table[alias.replace(".", "_") if underscored else alias] = name
    return table


_SGM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
               "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_SGM_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def sgm_names(names) -> dict[str, str]:
    """A UNet's layer names (diffusers') -> the same layers' names in the SGM/LDM layout, in which the
    blocks are numbered in one row: input_blocks.K (conv_in first, then per level its resnet-plus-attention
    pairs and downsampler), middle_block.0-2, output_blocks.K (per level n + 1 pairs, the upsampler last).
    Empty for names that are not a UNet's."""
    n = len({m.split(".")[3] for m in names if m.startswith("down_blocks.0.resnets.")})
    if not n:
        return {}
    with_attention = {int(m.split(".")[1]) for m in names if m.startswith("up_blocks.") and ".attentions." in m}
    out = {}
    for name in names:
        parts = name.split(".")
        if name in _SGM_FIXED:
            out[name] = _SGM_FIXED[name]
            continue
        if parts[0] == "mid_block" and len(parts) > 3:
            kind, rest = parts[1], parts[3:]
            head = f"middle_block.{ {'resnets': 2 * int(parts[2]), 'attentions': 1}[kind] }"
        elif parts[0] in ("down_blocks", "up_blocks") and len(parts) > 4:
            level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            down = parts[0] == "down_blocks"
            if kind == "downsamplers":
                head, rest = f"input_blocks.{(level + 1) * (n + 1)}.0", ["op", *rest[1:]]
            elif kind == "upsamplers":
                head = f"output_blocks.{level * (n + 1) + n}.{2 if level in with_attention else 1}"
            else:
                block = 1 + level * (n + 1) + j if down else level * (n + 1) + j
                head = f"{'input_blocks' if down else 'output_blocks'}.{block}.{0 if kind == 'resnets' else 1}"
        else:
            continue
        if kind == "resnets":
            rest = [_SGM_RESNET.get(rest[0], rest[0]), *rest[1:]]
        out[name] = ".".join([head, *rest])
    return out


def read_lora(path, names: dict[str, set[str]]) -> dict[str, dict[str, LoraLayer]]:
    """The layers of the LoRA file `path`, {component: {module: LoraLayer}}, for a pipeline whose
    components have the module names `names` ({component: {"down_blocks.0. ... .to_q", ...}})."""
    path = Path(path).expanduser()
    tensors, metadata = _read_safetensors(path)
    if not tensors:
        raise MusicvizError(f"{path} holds no tensors: not a LoRA file")
    parts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    tables: dict[tuple[str, bool], dict[str, str]] = {}
    for key, value in sorted(tensors.items()):  # the first mismatch named is the same every time
        component, module, underscored, kind, _ = _split(key, path)
        if component not in names:
            raise MusicvizError(f"{path} changes the {component}, which this model does not have")
        if (component, underscored) not in tables:
            tables[component, underscored] = _aliases(names.get(component, ()), underscored)
        table = tables[component, underscored]
        if underscored and module not in table:
            raise MusicvizError(f"{path} does not fit this model: {key} names no layer of its {component}")
        module = table.get(module, module)
        parts.setdefault((component, module), {})[kind] = value
    layers: dict[str, dict[str, LoraLayer]] = {}
    for (component, module), part in parts.items():
        if "down" not in part or "up" not in part:
            raise MusicvizError(f"{path} is incomplete: {component} layer {module} lacks its "
                                f"{'down (A)' if 'down' not in part else 'up (B)'} matrix")
        down, up = part["down"], part["up"]
        rank = down.shape[0]
        if up.shape[1] != rank:
            raise MusicvizError(f"{path}: {component} layer {module} has down rank {rank} but up rank {up.shape[1]}")
        alpha, rs = _alpha(metadata, component, module)
        if "alpha" in part:
            alpha = float(np.asarray(part["alpha"]).reshape(-1)[0])
        alpha = rank if alpha is None else alpha
        layers.setdefault(component, {})[module] = LoraLayer(down, up, alpha / (np.sqrt(rank) if rs else rank))
    return layers


def fuse_lora(params: dict[str, dict[str, mx.array]], path, scale: float = 1.0) -> tuple[dict, dict]:
    """The weights of `params` ({"unet": {"down_blocks.0...to_q.weight": array, ...}, "text_encoder": ...},
    mlx layouts) that the LoRA file `path` changes, `scale` times, fused in float32 and cast back:
    ({component: {key: array}}, what a record keeps of the LoRA). Raises MusicvizError naming the first
    layer that does not fit; changes nothing itself."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) or not np.isfinite(scale):
        raise MusicvizError(f"LoRA scale must be a finite number, got {scale!r}")
    if abs(scale) > MAX_SCALE:
        raise MusicvizError(f"LoRA scale {scale:g} is out of range: at most {MAX_SCALE:g} either way (1 is the LoRA as "
                            "trained)")
    path = Path(path).expanduser()
    names = {name: {k[:-len(".weight")] for k in weights if k.endswith(".weight")} for name, weights in params.items()}
    layers = read_lora(path, names)
    fused = {}
    for component, modules in layers.items():
        if component not in params:
            raise MusicvizError(f"{path} changes the {component}, which this model does not have")
        weights = params[component]
        for module, layer in modules.items():
            key = f"{module}.weight"
            if key not in weights:
                raise MusicvizError(f"{path} does not fit this model: its {component} has no layer {module}")
            if f"{module}.scales" in weights:
                raise MusicvizError(f"{path}: the {component} is quantized; LoRAs fuse into float weights, so use the "
                                    "float model (`convert FLOAT DST --lora FILE --bits 8` stores a quantized fused one)")
            weight = weights[key]
            delta = layer.delta()
            if not np.all(np.isfinite(delta)):
                raise MusicvizError(f"{path} is damaged: its {component} layer {module} holds values that are not "
                                    "finite (NaN or infinity)")
            if delta.ndim == 4:  # torch's (out, in, kh, kw) -> mlx's (out, kh, kw, in)
                delta = delta.transpose(0, 2, 3, 1)
            if delta.size != weight.size or delta.shape[0] != weight.shape[0]:
                raise MusicvizError(f"{path} does not fit this model: {component} layer {module} is "
                                    f"{tuple(weight.shape)} but the LoRA makes {tuple(delta.shape)}")
            total = weight.astype(mx.float32) + float(scale) * mx.array(delta.reshape(weight.shape))
            fused.setdefault(component, {})[key] = total.astype(weight.dtype)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    record = {"file": path.name, "sha256": digest, "scale": float(scale),
              "layers": {component: len(modules) for component, modules in layers.items()}}
    return fused, record
