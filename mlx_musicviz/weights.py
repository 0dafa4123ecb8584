"""Safetensors I/O: validated reading (clear errors for truncated or foreign files), atomic
saving with metadata, and loading weights into MLX modules with shape checks."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .errors import MusicvizError
from .files import atomic_output

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pth", ".pt", ".pkl")
QUANTIZATION_KEYS = (".scales", ".biases")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U32": 4, "BOOL": 1}


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, after checking that every tensor's bytes are present."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise MusicvizError(f"{path} is truncated or not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise MusicvizError(f"{path} is truncated or not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise MusicvizError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MusicvizError(f"{path} is not a safetensors file (unreadable header)") from None
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise MusicvizError(f"{path} is not a safetensors file (bad entry {key!r})") from None
        end = max(end, stop)
    if 8 + n + end > size:
        raise MusicvizError(f"{path} is truncated: {size} bytes on disk, {8 + n + end} expected")
    return header


def load_safetensors(path: Path) -> tuple[dict[str, mx.array], dict[str, str]]:
    """All tensors of a safetensors file as mlx arrays, and its metadata."""
    header = read_safetensors_header(path)
    try:
        arrays, metadata = mx.load(str(path), return_metadata=True)
    except Exception as e:  # mlx raises plain RuntimeError/ValueError with terse texts
        raise MusicvizError(f"cannot read {path}: {e}") from None
    if len(arrays) != len([k for k in header if k != "__metadata__"]):
        raise MusicvizError(f"cannot read every tensor in {path}")
    return arrays, dict(metadata or {})


def save_safetensors(path: Path, arrays: dict[str, mx.array], metadata: dict[str, str] | None = None) -> None:
    """Write atomically: a temporary file beside the target, renamed into place."""
    with atomic_output(path, make_parents=True) as tmp:
        mx.save_safetensors(tmp, arrays, metadata={k: str(v) for k, v in (metadata or {}).items()})


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check_weights(module: nn.Module, weights: dict[str, mx.array], source: str) -> None:
    """Raise a one-line MusicvizError naming `source` if `weights` do not fit `module` exactly."""
    expected = dict(tree_flatten(module.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MusicvizError(f"{source}: missing weight {missing[0]}{more}; the file does not fit its config "
                            "or quantization record")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise MusicvizError(f"{source}: unexpected weight {unexpected[0]}{more}; the file does not fit its config "
                            "or quantization record")
    for key, value in expected.items():
        if tuple(weights[key].shape) != tuple(value.shape):
            raise MusicvizError(
                f"{source}: weight {key} has shape {tuple(weights[key].shape)}, "
                f"the config and quantization record need {tuple(value.shape)}"
            )


def load_into(module: nn.Module, weights: dict[str, mx.array], source: str, dtype=None) -> nn.Module:
    """Check and load weights into `module` (cast floating weights to `dtype` if given).

    The scales and biases of quantized layers keep their stored dtype: quantized layers unpack
    into the compute dtype themselves, and the weights stay small in memory.
    """
    check_weights(module, weights, source)
    if dtype is not None:
        weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and not k.endswith(QUANTIZATION_KEYS)
                   else v for k, v in weights.items()}
    module.load_weights(list(weights.items()), strict=True)
    module.eval()
    mx.eval(module.parameters())
    return module


def cast_floats(module: nn.Module, dtype) -> nn.Module:
    """Cast floating parameters to `dtype`, except the scales and biases of quantized layers."""
    cast = [(k, v.astype(dtype)) for k, v in tree_flatten(module.parameters())
            if mx.issubdtype(v.dtype, mx.floating) and not k.endswith(QUANTIZATION_KEYS)]
    module.update(tree_unflatten(cast), strict=False)
    return module


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a fully written folder into place, replacing an older one."""
    target = Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
