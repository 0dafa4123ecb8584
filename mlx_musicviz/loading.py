"""`load_pipeline`: a pipeline from an MLX checkpoint, a diffusers folder or a hub repo id (converted once
into the cache by `convert.resolve_model`), or `random:NAME`; with LoRAs fused and quantized on request."""

from __future__ import annotations

import os
import warnings

import mlx.core as mx

from .checks import check_dtype, dtype_name
from .errors import MusicvizError
from .pipeline import DEFAULT_MODEL, Pipeline


def load_pipeline(path_or_repo: str | os.PathLike = DEFAULT_MODEL, dtype=None, revision: str | None = None,
                  bits: int | None = None, group_size: int = 64, mixed: bool = False, loras=(),
                  scheduler: str | None = None, steps: int = 1) -> Pipeline:
    """Load an MLX checkpoint, a diffusers folder, a hub repo id (converted once and cached), or
    `random:NAME` (random weights of a known architecture: see `random_models`).

    dtype: the compute dtype (activations): None or "auto" for the device's (float16 on a GPU, where it
    halves the memory traffic; float32 on the CPU, where mlx has no half-precision BLAS, so float16 and
    bfloat16 are slower, not faster: a warning says so), "float32", "float16", "bfloat16" or mx dtypes. bits / group_size / mixed: quantize a float model (converted once into the
    cache); a quantized checkpoint needs no flag, its record says how.
    loras: LoRA files fused into the float weights in turn (see `Pipeline.fuse_lora`), before `bits`
    quantizes them: each a path, a (path, scale) pair or "PATH:SCALE".
    scheduler: another scheduler's one step than the checkpoint's (see `Pipeline.set_scheduler`): "lcm"
    for LCM-LoRA, "tcd:800" for Hyper-SD's 1-step LoRA; steps: the number of steps (1 to 8) of LCM or Euler
    (SD-Turbo's and SDXL-Turbo's own schedulers, ancestral or not).
    """
    if scheduler is not None or steps != 1:
        from .scheduler import check_scheduler

        steps = check_scheduler(scheduler, steps)  # a bad name fails before the model loads
        pipe = load_pipeline(path_or_repo, dtype, revision, bits, group_size, mixed, loras)
        return pipe.set_scheduler(scheduler, steps)
    dtype = check_dtype(dtype)
    if dtype in (mx.float16, mx.bfloat16) and mx.default_device() == mx.cpu:
        name = dtype_name(dtype)
        warnings.warn(f"{name} compute on the CPU: mlx has no half-precision BLAS there, so a frame takes about "
                      "10x float32's time (float32 is the CPU's dtype; storage bits are separate)", stacklevel=2)
    if isinstance(loras, (str, os.PathLike)):  # one LoRA given bare, not in a list
        loras = [loras]
    if loras:  # fused into float weights, then quantized in memory
        pipe = load_pipeline(path_or_repo, dtype, revision)
        from .lora import lora_argument

        for lora in loras:
            pipe.fuse_lora(*lora_argument(lora))
        return pipe.quantize(bits, group_size, mixed) if bits else pipe
    if str(path_or_repo).startswith("random:"):
        return Pipeline.random(str(path_or_repo)[len("random:"):], dtype=dtype, bits=bits, group_size=group_size,
                               mixed=mixed)
    from .convert import resolve_model  # a folder that is not a converted checkpoint is converted once

    return Pipeline.from_folder(resolve_model(path_or_repo, revision, bits, group_size, mixed), dtype=dtype)


def pipeline_for(pipeline: Pipeline | None, model, loras=(), scheduler: str | None = None, steps: int = 1,
                 dtype=None) -> Pipeline:
    """`pipeline` itself, or `model` loaded with the LoRAs, scheduler, steps and dtype (see `load_pipeline`),
    for render, preview, live and compose. Those shape a model as it loads, so a loaded `pipeline` takes
    none of them (they would be ignored): MusicvizError names them."""
    if pipeline is None:
        return load_pipeline(model, loras=loras, scheduler=scheduler, steps=steps, dtype=dtype)
    given = [name for name, unset in (("loras", not loras), ("scheduler", scheduler is None),
                                      ("steps", steps is None or (not isinstance(steps, bool) and steps == 1)),
                                      ("dtype", dtype is None or (isinstance(dtype, str) and dtype == "auto")))
             if not unset]
    if given:
        one = len(given) == 1
        raise MusicvizError(f"{' and '.join(given)} {'shapes' if one else 'shape'} a model as it loads: give "
                            f"{'it' if one else 'them'} to load_pipeline, not beside pipeline=")
    return pipeline
