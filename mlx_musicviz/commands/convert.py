"""`musicviz-mlx convert`: a diffusers folder, hub id or MLX checkpoint to an MLX checkpoint."""

from __future__ import annotations

import click

from ..cli import LORA_OPTION, friendly_errors, main


@main.command()
@click.argument("src")
@click.argument("dst", required=False)
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True, help="Storage dtype of the converted weights (auto keeps the source's).")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) when SRC is a repo id.")
@click.option("--bits", type=click.Choice(["4", "8"]), default=None, help="Quantize to 4 or 8 bits.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Weights sharing one scale and bias.")
@click.option("--quantize", "quantize_components", default=None,
              show_default="text_encoder,text_encoder_2,unet,vae_large: those the model has",
              help="Comma-separated components to quantize: text_encoder, text_encoder_2 (SDXL), unet, vae (the "
                   "tiny VAE of SDXS, the KL VAE of SD-Turbo and SDXL-Turbo), vae_large (SDXS's KL VAE).")
@click.option("--mixed", is_flag=True, help="Keep conv_in, conv_out and the time embedding at 8 bits.")
@click.option("--tiny-vae", default=None, metavar="SRC",
              help="Add a tiny VAE (TAESD) to a model with a KL VAE, for fast decoding (--vae auto then uses it): "
                   "madebyollin/taesd for SD-Turbo and SD1.5, madebyollin/taesdxl for SDXL-Turbo; a hub id, a "
                   "diffusers folder or TAESD .safetensors files.")
@LORA_OPTION
@friendly_errors
def convert(src, dst, dtype, revision, bits, group_size, quantize_components, mixed, tiny_vae, loras):
    """Convert SRC (a diffusers folder, a hub repo id, or an MLX checkpoint) into an MLX checkpoint DST.

    DST defaults to weights/<name of SRC>.

    \b
    Examples:
      musicviz-mlx convert IDKiro/sdxs-512-0.9
      musicviz-mlx convert ./sdxs-512-dreamshaper weights/dreamshaper --dtype float16
      musicviz-mlx convert weights/sdxs-512-0.9 weights/sdxs-512-0.9-q4 --bits 4 --mixed
      musicviz-mlx convert weights/sdxs-512-0.9 weights/ink-q8 --lora ink.safetensors:0.8 --bits 8
      musicviz-mlx convert stabilityai/sd-turbo weights/sd-turbo-taesd --tiny-vae madebyollin/taesd
    """
    from pathlib import Path

    from ..convert import convert_checkpoint

    if dst is None:
        dst = Path("weights") / Path(src.rstrip("/")).name.replace(":", "-")  # random:tiny -> random-tiny
    from ..convert.checkpoint import DEFAULT_QUANTIZED

    quantize = DEFAULT_QUANTIZED if quantize_components is None else tuple(
        c.strip() for c in quantize_components.split(",") if c.strip())
    out = convert_checkpoint(src, dst, dtype=dtype, revision=revision, bits=int(bits) if bits else None,
                             group_size=int(group_size), quantize=quantize, mixed=mixed, loras=loras, tiny_vae=tiny_vae)
    fused = f", {len(loras)} LoRA{'s' if len(loras) > 1 else ''} fused" if loras else ""
    tiny = f", with the tiny VAE {tiny_vae}" if tiny_vae else ""
    click.echo(f"converted {src} -> {out}" + (f" ({bits}-bit, group size {group_size}{fused})" if bits else
                                              (f" ({fused[2:]})" if fused else "")) + tiny)
