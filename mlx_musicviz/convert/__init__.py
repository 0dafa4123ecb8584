"""Weight conversion: diffusers / transformers / TAESD checkpoints -> MLX checkpoints.

Installed as `mlx_musicviz.convert`; `musicviz-mlx convert SRC DST` calls `convert_checkpoint`.
"""

from ..checkpoint_format import COMPONENTS, FORMAT_NAME, read_record
from .cache import cache_root, resolve_model
from .checkpoint import convert_checkpoint, convert_component, load_tiny_autoencoder
from .hub import resolve_source

__all__ = [
    "COMPONENTS",
    "FORMAT_NAME",
    "cache_root",
    "convert_checkpoint",
    "convert_component",
    "load_tiny_autoencoder",
    "read_record",
    "resolve_model",
    "resolve_source",
]
