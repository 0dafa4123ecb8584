"""Any model source as a converted checkpoint folder: converted once into the cache
(`$MLX_MUSICVIZ_CACHE`, default ~/.cache/mlx-musicviz) and found there after."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..checkpoint_format import read_record
from .checkpoint import convert_checkpoint
from .hub import resolve_source


def cache_root() -> Path:
    return Path(os.environ.get("MLX_MUSICVIZ_CACHE") or Path.home() / ".cache" / "mlx-musicviz")


def resolve_model(path_or_repo: str | os.PathLike, revision: str | None = None, bits: int | None = None,
                  group_size: int = 64, mixed: bool = False) -> Path:
    """Folder of an MLX checkpoint for `path_or_repo`, converting (once, cached) if needed.

    With `bits`, a float source is quantized once into the cache; a checkpoint that is already
    quantized is used as it is (its record says how)."""
    folder, origin = resolve_source(path_or_repo, revision)
    record = read_record(folder)
    if record is not None and (bits is None or record.get("quantization")):
        return folder
    key = f"{origin['source']}@{origin['revision']}"
    if bits is not None:
        key += f"|q{bits}g{group_size}{'m' if mixed else ''}"
        origin = {**origin, "source": f"{origin['source']}-q{bits}"}
    if origin["revision"] is None:  # a local folder: re-convert when its weights change
        stamps = sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*.safetensors"))
        key += repr(stamps)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(origin["source"]).strip("/"))[-60:]
    target = cache_root() / "converted" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if read_record(target) is None:
        convert_checkpoint(folder, target, revision=revision, bits=bits, group_size=group_size, mixed=mixed)
    return target
