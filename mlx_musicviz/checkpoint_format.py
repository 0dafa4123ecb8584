"""The converted checkpoint's format, as the loader reads it and the converter (`convert/`) writes it.

A folder holds:
    musicviz.json                 the record: format, version, source, revision, library version,
                                  per component its dtype and, when quantized, its quantization
                                  (bits, group size, mode, quantized modules, modules kept float)
    <component>/config.json       the source config (+ `_class_name`)
    <component>/model.safetensors MLX layout (NHWC kernels), metadata: format, component, dtype,
                                  quantization (the same JSON as the record's)
    tokenizer/, scheduler/        as in the source (and SDXL's tokenizer_2/)
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from .errors import MusicvizError
from .models.configs import read_json
from .models.quantized import QuantizationPlan

FORMAT_NAME = "mlx-musicviz"
FORMAT_VERSION = 2  # 2: quantized components
RECORD_NAME = "musicviz.json"
WEIGHTS_NAME = "model.safetensors"
ENCODER_NAME = "encoder.safetensors"  # beside a KL VAE's weights: its encoder, read only to train LoRAs
# Pipeline components: the three the one-step pipeline needs, SDXL's second text encoder, SDXS's optional
# large VAE, and a tiny VAE added to a model whose vae/ is a KL one (`convert --tiny-vae`).
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae", "vae_large", "vae_tiny")
REQUIRED = ("text_encoder", "unet", "vae", "tokenizer")
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def read_record(folder: Path) -> dict | None:
    """The conversion record of an MLX checkpoint folder, or None for other folders."""
    path = Path(folder) / RECORD_NAME
    if not path.exists():
        return None
    record = read_json(path)
    if record.get("format") != FORMAT_NAME:
        raise MusicvizError(f"{path} is not an {FORMAT_NAME} record")
    if int(record.get("version", 0)) > FORMAT_VERSION:
        raise MusicvizError(f"{path} was written by a newer mlx-musicviz (format {record['version']}); upgrade")
    return record


def component_plan(record: dict | None, name: str, where: str = RECORD_NAME) -> QuantizationPlan | None:
    """The quantization plan of one component, from a checkpoint record (None: float)."""
    data = (record or {}).get("quantization", {}).get(name)
    return None if data is None else QuantizationPlan.from_dict(data, f"{where} ({name})")


def check_plan_matches(record_plan: QuantizationPlan | None, metadata: dict, path: Path) -> None:
    """The record and the weights file must describe the same quantization."""
    stored = metadata.get("quantization")
    stored = json.loads(stored) if stored else None
    expected = record_plan.to_dict() if record_plan else None
    if stored != expected:
        def say(q):
            return "float" if q is None else f"{q['bits']}-bit, group size {q['group_size']}, {len(q['modules'])} modules"
        raise MusicvizError(f"{path} does not match {RECORD_NAME}: the record says {say(expected)}, "
                            f"the weights say {say(stored)}")
