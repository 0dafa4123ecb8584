"""Weight conversion: diffusers / transformers / TAESD checkpoints -> MLX checkpoints.

Installed as `mlx_musicviz.convert`; `musicviz-mlx convert SRC DST` calls `convert_checkpoint`.
"""

from .checkpoint import (
    COMPONENTS,
    FORMAT_NAME,
    convert_checkpoint,
    convert_component,
    load_tiny_autoencoder,
    read_record,
)
from .hub import resolve_source

__all__ = [
    "COMPONENTS",
    "FORMAT_NAME",
    "convert_checkpoint",
    "convert_component",
    "load_tiny_autoencoder",
    "read_record",
    "resolve_source",
]
