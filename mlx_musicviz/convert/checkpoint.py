"""Convert a diffusers-layout checkpoint (or TAESD files, or an MLX checkpoint) to MLX, in the layout
`checkpoint_format` describes."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx

from .. import __version__
from ..checkpoint_format import (
    COMPONENTS,
    DTYPES,
    ENCODER_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    RECORD_NAME,
    REQUIRED,
    WEIGHTS_NAME,
    component_plan,
    read_record,
)
from ..errors import MusicvizError
from ..models import AutoencoderTiny, TinyVAEConfig, build_model, class_name_of
from ..models.configs import read_json
from ..models.quantized import MIXED_PRESET, QuantizationPlan, quantize_module
from ..weights import (
    PICKLE_SUFFIXES,
    QUANTIZATION_KEYS,
    check_weights,
    load_into,
    load_safetensors,
    read_safetensors_header,
    replace_dir,
    save_safetensors,
    write_json,
)
from . import keymaps
from .hub import looks_like_repo_id, resolve_source

# Quantized by default when bits are asked for; the 1.2 M-parameter tiny VAE stays float.
DEFAULT_QUANTIZED = ("text_encoder", "text_encoder_2", "unet", "vae_large")
KEY_FUNCTIONS = {
    "CLIPTextModel": keymaps.text_encoder_key,
    "CLIPTextModelWithProjection": keymaps.text_encoder_with_projection_key,
    "UNet2DConditionModel": keymaps.unet_key,
    "AutoencoderTiny": keymaps.tiny_vae_key,
    "AutoencoderKL": keymaps.kl_vae_key,
}
def find_weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) of one component folder; pickles are refused."""
    for stem in ("model", "diffusion_pytorch_model"):
        index = folder / f"{stem}.safetensors.index.json"
        if index.exists():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            return [folder / s for s in shards]
        for variant in ("", ".fp16"):
            path = folder / f"{stem}{variant}.safetensors"
            if path.exists():
                return [path]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    if pickles:
        raise MusicvizError(
            f"refusing pickle file {pickles[0]}: pickle can run arbitrary code; use the checkpoint's "
            ".safetensors weights (or convert them to safetensors first)"
        )
    if len(found) > 1:
        raise MusicvizError(f"{folder} holds several .safetensors files and no index; cannot tell which to use")
    raise MusicvizError(f"no weights in {folder} (expected model.safetensors or diffusion_pytorch_model.safetensors)")


def _read_weights(files: list[Path]) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for f in files:
        arrays, _ = load_safetensors(f)
        weights.update(arrays)
    return weights


def _cast(weights: dict[str, mx.array], dtype) -> dict[str, mx.array]:
    if dtype is None:
        return weights
    return {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and not k.endswith(QUANTIZATION_KEYS) else v
            for k, v in weights.items()}


def convert_component(folder: Path, dtype=None) -> tuple[dict, dict[str, mx.array]]:
    """(config, MLX weights) of one diffusers/transformers component folder, checked against its config."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    name = class_name_of(config, str(folder / "config.json"))
    config = {**config, "_class_name": name}
    files = find_weight_files(folder)
    weights = keymaps.map_state_dict(_read_weights(files), KEY_FUNCTIONS[name])
    check_weights(build_model(config, str(folder / "config.json")), weights, str(files[0]))
    return config, _cast(weights, dtype)


def kl_encoder_weights(folder: Path) -> dict[str, mx.array]:
    """MLX weights of the encoder half (encoder.*, quant_conv.*) of a diffusers AutoencoderKL folder; empty
    where the file holds none."""
    return keymaps.map_state_dict(_read_weights(find_weight_files(Path(folder))), keymaps.kl_encoder_key)


def _write_kl_encoder(src: Path, dst: Path, converted: bool, cast, name: str) -> None:
    """Keep a KL VAE's encoder beside its converted weights (`ENCODER_NAME`), from a diffusers folder or
    a converted checkpoint; nothing where the source has none."""
    if converted:
        if (src / ENCODER_NAME).exists():
            weights, _ = load_safetensors(src / ENCODER_NAME)
        else:
            return
    else:
        weights = kl_encoder_weights(src)
    if weights:
        weights = _cast(weights, cast)
        metadata = {"format": FORMAT_NAME, "component": f"{name}-encoder", "library_version": __version__,
                    "dtype": str(_storage_dtype(weights)).replace("mlx.core.", "")}
        save_safetensors(dst / ENCODER_NAME, weights, metadata)


def _storage_dtype(weights: dict[str, mx.array]):
    return next(v.dtype for k, v in weights.items() if mx.issubdtype(v.dtype, mx.floating))


def load_converted_component(folder: Path, dtype=None) -> tuple[dict, dict[str, mx.array]]:
    folder = Path(folder)
    config = read_json(folder / "config.json")
    weights, _ = load_safetensors(folder / WEIGHTS_NAME)
    return config, _cast(weights, dtype)


def quantize_component(config: dict, weights: dict[str, mx.array], bits: int, group_size: int,
                       overrides: dict[str, int | None] | None, dtype) -> tuple[dict[str, mx.array], QuantizationPlan]:
    """Quantize one component's MLX weights; scales, biases and float layers are stored in `dtype`."""
    from mlx.utils import tree_flatten

    model = build_model(config)
    model.load_weights(list(weights.items()), strict=True)
    plan = quantize_module(model, bits, group_size, overrides, dtype)
    return dict(tree_flatten(model.parameters())), plan


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    dtype: str = "auto",
    revision: str | None = None,
    components: tuple[str, ...] | None = None,
    bits: int | None = None,
    group_size: int = 64,
    quantize: tuple[str, ...] = DEFAULT_QUANTIZED,
    mixed: bool | dict[str, int | None] = False,
    loras=(),
    tiny_vae: str | Path | None = None,
) -> Path:
    """Convert `src` (diffusers folder, hub repo id, or MLX checkpoint) into the MLX checkpoint `dst`.

    dtype: "auto" keeps the source's floating dtype (float16 for quantized components' scales and
    float layers); "float32" / "float16" / "bfloat16" cast.
    components: the subset to write (default: every component present).
    bits, group_size: quantize the components named in `quantize` (4 or 8 bits; 32, 64 or 128).
    mixed: True keeps the sensitive layers (MIXED_PRESET) at 8 bits; or a dict of module-path
    patterns -> bits (None: float).
    loras: LoRA files fused into the float weights before quantizing, as `load_pipeline` takes them;
    the record lists them with their scales.
    tiny_vae: a tiny VAE to add to a model whose `vae/` is a KL one (`vae_tiny/`; `--vae auto` then
    decodes with it): a hub id (madebyollin/taesd for SD1.5/SD2 latents, madebyollin/taesdxl for SDXL's),
    a diffusers AutoencoderTiny folder or TAESD `*_encoder`/`*_decoder` safetensors; the record says which.
    `src` may also be `random:NAME`: the random weights `load_pipeline("random:NAME")` builds.
    Nothing is left at `dst` if conversion fails.
    """
    if str(src).startswith("random:"):
        if revision is not None:
            raise MusicvizError(f"{src} has no revisions: its weights are built here, not downloaded")
        with tempfile.TemporaryDirectory(prefix="musicviz-random-") as folder:
            source = write_random_checkpoint(str(src)[len("random:"):], Path(folder))
            return convert_checkpoint(source, dst, dtype, None, components, bits, group_size, quantize, mixed, loras,
                                      tiny_vae)
    if dtype != "auto" and dtype not in DTYPES:
        raise MusicvizError(f"unknown dtype {dtype!r} (auto, {', '.join(DTYPES)})")
    unknown = sorted(set(quantize) - set(COMPONENTS))
    if unknown:
        raise MusicvizError(f"cannot quantize {unknown[0]!r}: components are {', '.join(COMPONENTS)}")
    overrides = (dict(MIXED_PRESET) if mixed is True else dict(mixed or {})) if bits else None
    if mixed and not bits:
        raise MusicvizError("mixed precision needs --bits")
    cast = None if dtype == "auto" else DTYPES[dtype]
    folder, origin = resolve_source(src, revision)
    record_in = read_record(folder)
    dst = Path(dst)
    if dst.resolve() == folder.resolve():
        raise MusicvizError("the destination is the source folder; choose another")
    if dst.exists() and not dst.is_dir():
        raise MusicvizError(f"{dst} exists and is not a folder")
    if dst.exists() and any(dst.iterdir()) and read_record(dst) is None:
        raise MusicvizError(f"{dst} is a non-empty folder that is not an mlx-musicviz checkpoint; refusing to replace it")
    for required in REQUIRED:
        if not (folder / required).is_dir():
            raise MusicvizError(f"{folder} has no {required}/ folder: not a complete diffusers checkpoint")
    wanted = [c for c in COMPONENTS if (folder / c).is_dir() and (components is None or c in components)]
    absent = [c for c in quantize if c not in wanted]
    if bits and absent and tuple(quantize) != DEFAULT_QUANTIZED:  # the default list names what any model may have
        raise MusicvizError(f"cannot quantize {absent[0]}: this model has no {absent[0]}/ (it has {', '.join(wanted)})")

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _folder_beside(dst)
    try:
        dtypes, plans, parts = {}, {}, {}
        for name in wanted:
            plan = component_plan(record_in, name, str(folder / RECORD_NAME))
            if record_in is not None:
                parts[name] = (*load_converted_component(folder / name, cast), plan)
            else:
                parts[name] = (*convert_component(folder / name, cast), plan)
        fused_loras = _fuse_loras(parts, loras)
        for name in wanted:
            config, weights, plan = parts.pop(name)
            if bits and name in quantize:
                if plan is not None:
                    raise MusicvizError(f"{src} is already quantized ({name}); convert from its float checkpoint")
                weights, plan = quantize_component(config, weights, bits, group_size, overrides, cast or mx.float16)
            dtypes[name] = str(_storage_dtype(weights)).replace("mlx.core.", "")
            metadata = {"format": FORMAT_NAME, "component": name, "dtype": dtypes[name], "library_version": __version__}
            if plan is not None:
                plans[name] = plan.to_dict()
                metadata["quantization"] = json.dumps(plans[name], sort_keys=True)
            write_json(tmp / name / "config.json", config)
            save_safetensors(tmp / name / WEIGHTS_NAME, weights, metadata)
            if class_name_of(config) == "AutoencoderKL":
                _write_kl_encoder(folder / name, tmp / name, record_in is not None, cast, name)
        added = _write_tiny_vae(tiny_vae, tmp, cast) if tiny_vae is not None else None
        if added is not None:
            dtypes["vae_tiny"] = added.pop("dtype")
        shutil.copytree(folder / "tokenizer", tmp / "tokenizer")
        if (folder / "tokenizer_2").is_dir() and "text_encoder_2" in wanted:
            shutil.copytree(folder / "tokenizer_2", tmp / "tokenizer_2")
        if (folder / "scheduler").is_dir():
            shutil.copytree(folder / "scheduler", tmp / "scheduler")
        record = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "library_version": __version__,
            "source": (record_in or {}).get("source", origin["source"]),
            "revision": (record_in or {}).get("revision", origin["revision"]),
            "components": dtypes,
        }
        if plans:
            record["quantization"] = plans
        if added is not None or (record_in or {}).get("tiny_vae"):
            record["tiny_vae"] = added or record_in["tiny_vae"]
        if (record_in or {}).get("loras") or fused_loras:
            record["loras"] = [*(record_in or {}).get("loras", []), *fused_loras]
        write_json(tmp / RECORD_NAME, record)
        replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _write_tiny_vae(source, folder: Path, cast) -> dict:
    """Write the tiny VAE `source` (see `convert_checkpoint`) as `folder/vae_tiny/` beside a KL model's
    components, checked against its UNet's latent channels; returns what the record keeps of it."""
    from mlx.utils import tree_flatten

    vae = read_json(folder / "vae" / "config.json")
    if class_name_of(vae) == "AutoencoderTiny":
        raise MusicvizError("this model's vae/ is already a tiny VAE (SDXS): --tiny-vae is for models with a KL VAE")
    path = Path(source).expanduser()
    origin = {"source": str(path.resolve()), "revision": None}
    if not path.exists() and looks_like_repo_id(str(source)):
        path, origin = resolve_source(source)
    model = load_tiny_autoencoder(path)
    channels = read_json(folder / "unet" / "config.json").get("in_channels", 4)
    if model.config.latent_channels != channels:
        raise MusicvizError(f"the tiny VAE {source} takes {model.config.latent_channels}-channel latents; this "
                            f"model's UNet makes {channels}")
    weights = _cast(dict(tree_flatten(model.parameters())), cast)
    dtype = str(_storage_dtype(weights)).replace("mlx.core.", "")
    config = {"_class_name": "AutoencoderTiny", **model.config.to_dict()}
    write_json(folder / "vae_tiny" / "config.json", config)
    save_safetensors(folder / "vae_tiny" / WEIGHTS_NAME, weights, {"format": FORMAT_NAME, "component": "vae_tiny",
                                                                   "dtype": dtype, "library_version": __version__})
    return {**origin, "dtype": dtype}


def _fuse_loras(parts: dict, loras) -> list[dict]:
    """Fuse `loras` (as `load_pipeline` takes them) into the weights of `parts` ({name: (config, weights,
    plan)}), in place; returns what the record keeps of them."""
    from ..lora import COMPONENTS as LORA_COMPONENTS
    from ..lora import fuse_lora, lora_argument

    done = []
    for lora in loras:
        params = {name: weights for name, (_, weights, _) in parts.items() if name in LORA_COMPONENTS}
        fused, record = fuse_lora(params, *lora_argument(lora))
        for name, changed in fused.items():
            params[name].update(changed)
        done.append(record)
    return done


def _folder_beside(path: Path) -> Path:
    """Create an empty folder with a fresh hidden name beside `path` and return it.

    Created with mode 0777 less the umask, as a plain mkdir would (mkdtemp makes 0700, which the
    finished checkpoint would keep: unreadable to other users); see files.temporary_beside."""
    for _ in range(100):
        folder = path.parent / f".{path.name}-{secrets.token_hex(4)}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free temporary name beside {path}")


def write_random_checkpoint(name: str, folder: Path) -> Path:
    """Write the model `random:NAME` (the weights `load_pipeline("random:NAME")` builds, its large VAE
    included where it has one) into `folder` as a float32 MLX checkpoint; return `folder`."""
    from mlx.utils import tree_flatten

    from ..pipeline import Pipeline
    from ..random_models import random_configs

    configs, _ = random_configs(name)
    pipe = Pipeline.random(name)
    parts = [part for part in COMPONENTS if part in configs]
    for part in parts:
        metadata = {"format": FORMAT_NAME, "component": part, "dtype": "float32", "library_version": __version__}
        write_json(folder / part / "config.json", configs[part])
        save_safetensors(folder / part / WEIGHTS_NAME, dict(tree_flatten(getattr(pipe, part).parameters())), metadata)
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    if pipe.tokenizer_2 is not None:
        pipe.tokenizer_2.save_pretrained(folder / "tokenizer_2")
    write_json(folder / "scheduler" / "scheduler_config.json", configs["scheduler"])
    write_json(folder / RECORD_NAME, {"format": FORMAT_NAME, "version": FORMAT_VERSION, "library_version": __version__,
                                      "source": f"random:{name}", "revision": None,
                                      "components": {part: "float32" for part in parts}})
    return folder


# -- TAESD files --------------------------------------------------------------------------


def _taesd_pair(path: Path) -> tuple[Path | None, Path | None]:
    if path.is_dir():
        enc = sorted(path.glob("*encoder*.safetensors"))
        dec = sorted(path.glob("*decoder*.safetensors"))
        if not enc and not dec:
            raise MusicvizError(f"{path} holds no *_encoder/*_decoder .safetensors files")
        return (enc[0] if enc else None), (dec[0] if dec else None)
    if path.suffix in PICKLE_SUFFIXES:
        raise MusicvizError(f"refusing pickle file {path}: use the .safetensors TAESD weights")
    if "decoder" in path.name:
        sibling = path.with_name(path.name.replace("decoder", "encoder"))
        return (sibling if sibling.exists() else None), path
    if "encoder" in path.name:
        sibling = path.with_name(path.name.replace("encoder", "decoder"))
        return path, (sibling if sibling.exists() else None)
    raise MusicvizError(f"{path} is not a tiny VAE this project reads: give a diffusers AutoencoderTiny folder (with its "
                        "config.json) or TAESD files named *_encoder / *_decoder .safetensors")


def taesd_config(encoder: dict | None, decoder: dict | None, where: str = "TAESD") -> TinyVAEConfig:
    """Infer latent channels and the FLUX.2 mid-block variant from TAESD weights (torch layout)."""
    for part, weights, first in (("decoder", decoder, "1.weight"), ("encoder", encoder, "0.weight")):
        if weights is not None and (first not in weights or not all(k.split(".")[0].isdigit() for k in weights)):
            raise MusicvizError(f"{where}: the {part} file is not a TAESD {part} (no numbered layers from {first})")
    if decoder is not None:
        latent = decoder["1.weight"].shape[1]
        gn = len({k.split(".")[0] for k in decoder if ".pool." in k})
    else:
        last = max(int(k.split(".")[0]) for k in encoder)
        latent = encoder[f"{last}.weight"].shape[0]
        gn = len({k.split(".")[0] for k in encoder if ".pool." in k})
    return TinyVAEConfig(latent_channels=latent, midblock_gn_blocks=gn)


def load_tiny_autoencoder(path: str | Path, dtype=mx.float32) -> AutoencoderTiny:
    """AutoencoderTiny from a diffusers `vae/` folder, a converted MLX component folder, or TAESD files."""
    path = Path(path)
    if not path.exists():
        raise MusicvizError(f"not found: {path}")
    if path.is_dir() and (path / "config.json").exists():
        if (path / WEIGHTS_NAME).exists() and (
            read_safetensors_header(path / WEIGHTS_NAME).get("__metadata__", {}).get("format") == FORMAT_NAME
        ):
            config, weights = load_converted_component(path)
        else:
            config, weights = convert_component(path)
        if class_name_of(config) != "AutoencoderTiny":
            name = class_name_of(config)
            raise MusicvizError(f"{path} holds {'an' if name[0] in 'AEIOU' else 'a'} {name}, not an AutoencoderTiny")
        return load_into(build_model(config), weights, str(path), dtype)
    enc_path, dec_path = _taesd_pair(path)
    parts = {}
    for part, file in (("encoder", enc_path), ("decoder", dec_path)):
        if file is not None:
            parts[part] = load_safetensors(file)[0]
    config = taesd_config(parts.get("encoder"), parts.get("decoder"), str(enc_path or dec_path))
    model = AutoencoderTiny(config, encoder="encoder" in parts, decoder="decoder" in parts)
    weights = {}
    for part, state in parts.items():
        weights.update({keymaps.taesd_key(k, part): keymaps.torch_conv_to_mlx(v) for k, v in state.items()})
    return load_into(model, weights, str(enc_path or dec_path), dtype)
