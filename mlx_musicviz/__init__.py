"""mlx-musicviz: music videos from a song and a prompt with SDXS (one-step diffusion) in MLX."""

from ._blas import preload_blas
from ._malloc import keep_freed_memory

# Must happen before anything imports mlx: see _blas.py.
preload_blas()
# Large CPU arrays reuse mapped pages instead of faulting fresh ones in: see _malloc.py.
keep_freed_memory()

__version__ = "0.1.0"

_LAZY = {
    "load_pipeline": ".loading",
    "Pipeline": ".pipeline",
    "MusicvizError": ".errors",
    "analyze": ".audio",
    "AudioFeatures": ".audio",
    "render": ".rendering",
    "RenderResult": ".rendering",
    "preview": ".stills",
    "write_note_prompts": ".note_writer",
    "live": ".realtime.session",
    "train_lora": ".training",
    "compose": ".composing",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'mlx_musicviz' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
