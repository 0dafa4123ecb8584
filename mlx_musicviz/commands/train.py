"""`musicviz-mlx train-lora`: a LoRA of a model's UNet, trained in MLX on a folder of images."""

from __future__ import annotations

import time

import click

from ..cli import friendly_errors, main


@main.command("train-lora")
@click.argument("folder", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The LoRA file to write (.safetensors).")
@click.option("--model", default="IDKiro/sdxs-512-0.9", show_default=True,
              help="Hub repo id, diffusers folder, converted folder, or random:NAME; a float model of any family.")
@click.option("-p", "--prompt", default=None, help="The caption of every image (this or --captions).")
@click.option("--captions", type=click.Path(), default=None,
              help="A JSON file: image file name -> caption (this or --prompt).")
@click.option("--rank", type=int, default=8, show_default=True, help="The LoRA's rank (its alpha is the rank).")
@click.option("--steps", type=int, default=500, show_default=True, help="Optimizer steps.")
@click.option("--lr", "learning_rate", type=float, default=1e-4, show_default=True, help="AdamW's learning rate.")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--resolution", type=int, default=512, show_default=True,
              help="Training side in pixels (images are resized and centre-cropped); a multiple of 64.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-every", type=int, default=50, show_default=True,
              help="Steps between checkpoints, kept in .NAME.train/ beside the output until it is written.")
@click.option("--restart", is_flag=True, help="Start over, throwing away the state an interrupted run kept.")
@friendly_errors
def train_lora(folder, output, model, prompt, captions, rank, steps, learning_rate, batch_size, resolution, seed,
               save_every, restart):
    """Train a LoRA of the model's UNet on the images in FOLDER (mel tiles from `mels`, or any pictures).

    The loss is the standard denoising loss over random timesteps; AdamW; a checkpoint every
    --save-every steps lets the same command resume after an interruption. The file is in
    diffusers/PEFT form: `--lora FILE` here, `load_lora_weights` in diffusers.

    \b
    Examples:
      musicviz-mlx mels piano/ tiles/
      musicviz-mlx train-lora tiles/ -p "a mel spectrogram of piano" -o piano.safetensors
      musicviz-mlx train-lora photos/ --captions captions.json --rank 16 --steps 2000 -o style.safetensors
    """
    import warnings

    from ..training import train_lora as train

    start, first, recent = time.perf_counter(), {}, []

    def progress(step, total, loss):
        first.setdefault("step", step)
        first.setdefault("time", time.perf_counter())
        recent[:] = [*recent[-19:], loss]
        done, seconds = step - first["step"], time.perf_counter() - first["time"]
        pace = f"  {done / seconds:.2f} steps/s  ETA {(total - step) * seconds / done:.0f} s" if done else ""
        click.echo(f"\r  step {step}/{total}  loss (mean of {len(recent)}) {sum(recent) / len(recent):.4f}{pace} ",
                   nl=False, err=True)

    def say(line):
        click.echo(line, err=True)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *a, **k: click.echo(f"warning: {message}", err=True)
            result = train(folder, output, model, prompt=prompt, captions=captions, rank=rank, steps=steps,
                           learning_rate=learning_rate, batch_size=batch_size, resolution=resolution, seed=seed,
                           save_every=save_every, resume=not restart, progress=progress, log=say)
    finally:
        if first:  # end the progress line
            click.echo("", err=True)
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    last = sum(result.losses[-20:]) / max(len(result.losses[-20:]), 1)
    click.echo(f"{result.output}: {steps} steps{resumed} in {time.perf_counter() - start:.0f} s, "
               f"mean loss of the last {min(20, len(result.losses))} steps {last:.4f}")
