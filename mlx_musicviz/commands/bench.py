"""`musicviz-mlx bench`: the benchmark runner beside PyTorch."""

from __future__ import annotations

import click
from click.core import ParameterSource

from ..cli import friendly_errors, main


def _torch_reference(config):
    """The PyTorch reference from benchmarks/ in this checkout, when torch and diffusers are installed.
    It builds and saves the model in a child process now; the child times it when the benchmark asks."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
        return None
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "torch_reference.py"
    if not path.exists():  # an installed package, not a checkout
        return None
    spec = importlib.util.spec_from_file_location("musicviz_torch_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    from ..benchmark import reference_device, tf32_enabled

    return module.TorchReference(config.model, config.size, vae=config.vae, device=reference_device(),
                                 tf32=tf32_enabled())


# The options `bench --quick` replaces with its own values (naming one of them with --quick is an error).
_QUICK_SETS = ("model", "size", "levels", "batches", "runs", "render_seconds", "live_seconds", "live_fps")


@main.command()
@click.option("--model", default="random:sdxs-512-0.9", show_default=True, help="Model to time (random:NAME needs no download).")
@click.option("--size", type=int, default=512, show_default=True)
@click.option("--levels", default="float32,8bit,4bit", show_default=True,
              help="Comma-separated: float32, float16, bfloat16, 8bit, 4bit; each also as LEVEL+compile (through mx.compile).")
@click.option("--batches", default="1,4", show_default=True, help="Comma-separated batch sizes.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True)
@click.option("--runs", type=int, default=3, show_default=True, help="Timed rounds; in each, every level and PyTorch run each component once, taking turns (median).")
@click.option("--render-seconds", type=float, default=10.0, show_default=True,
              help="Length of the end-to-end render (0: skip).")
@click.option("--audio", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Audio for the end-to-end render (default: the bundled 5 s trumpet clip, so a render covers at most 5 s).")
@click.option("--live-seconds", type=float, default=0.0, show_default=True,
              help="Also play this much of the audio through live mode with a simulated page: frames shown a second, "
                   "sync error, stalls, latency (0: skip).")
@click.option("--live-fps", type=float, default=24.0, show_default=True, help="The live scenario's frames per second.")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Time PyTorch on the same weights (needs the dev extra and a checkout).")
@click.option("--layers", is_flag=True,
              help="Also time every convolution and linear-layer shape of the float32 UNet and VAE alone (beside PyTorch).")
@click.option("--profile", is_flag=True,
              help="Also split the float32 frame's time by kind of work (convolutions, linear layers, attention, "
                   "norms and activations, other), beside PyTorch's.")
@click.option("--vae", type=click.Choice(["auto", "tiny", "large"]), default="auto", show_default=True,
              help="The VAE that decodes: auto (the tiny one where the model has one, else its KL VAE), tiny, or large (the "
                   "KL VAE); quantized levels quantize the text encoders and UNet, and SDXS's large VAE when it decodes "
                   "(tiny VAEs and KL models' own VAE stay float, as convert --bits leaves them).")
@click.option("--quick", is_flag=True,
              help="A small run for CI: random:tiny at 128 px, batch 1 and 2, one run, with --layers, --profile and 3 s of live "
                   "at 8 fps (--vae and --group-size apply).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="benchmarks/results", show_default=True,
              help="Folder for results.json, results.md and fps.png.")
@friendly_errors
def bench(model, size, levels, batches, group_size, runs, render_seconds, audio, live_seconds, live_fps, reference, layers,
          profile, vae, quick, out_dir):
    """Frames per second by precision level and batch size, beside PyTorch and the matmul peak.

    \b
    Examples:
      musicviz-mlx bench --quick
      musicviz-mlx bench --model random:sdxs-512-0.9 --levels float32,8bit,4bit --batches 1,4
      musicviz-mlx bench --vae large --levels float32,8bit --batches 1 --render-seconds 0
      musicviz-mlx bench --levels float32 --batches 1 --render-seconds 0 --profile
      musicviz-mlx bench --model random:tiny --size 128 --levels float32 --batches 1 --live-seconds 10 --live-fps 12
    """
    from ..benchmark import BenchConfig, run_benchmark, write_outputs

    try:
        config = BenchConfig(model=model, size=size, levels=tuple(v.strip() for v in levels.split(",") if v.strip()),
                             batches=tuple(int(b) for b in batches.split(",") if b.strip()),
                             group_size=int(group_size), runs=runs, render_seconds=render_seconds, audio=audio,
                             live_seconds=live_seconds, live_fps=live_fps, layers=layers, profile=profile, vae=vae)
    except ValueError:
        raise click.UsageError(f"--batches must be comma-separated integers, not {batches!r}") from None
    if quick:
        overridden = [f"--{name.replace('_', '-')}" for name in _QUICK_SETS
                      if click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE]
        if overridden:
            raise click.UsageError(f"--quick sets its own {', '.join(overridden)}: drop "
                                  f"{'it' if len(overridden) == 1 else 'them'} or drop --quick")
        config = BenchConfig(model="random:tiny", size=128, levels=("float32", "8bit", "4bit"), batches=(1, 2), runs=1,
                             group_size=int(group_size), render_seconds=2.0, audio=audio, live_seconds=3.0,
                             live_fps=8.0, layers=True, profile=True, vae=vae)
    config.check()
    ref = _torch_reference(config) if reference else None
    if reference and ref is None:
        click.echo("note: no PyTorch reference (install the dev extra and run from a checkout)", err=True)
    try:
        result = run_benchmark(config, reference=ref, log=lambda line: click.echo(line, err=True))
    finally:
        if ref is not None:
            ref.close()
    for path in write_outputs(result, out_dir):
        click.echo(str(path))
