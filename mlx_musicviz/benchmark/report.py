"""The benchmark's report: a Markdown summary, a chart (PNG) and the JSON of its result."""

from __future__ import annotations

import json
from pathlib import Path

from .config import BenchResult
from .interleave import layer_totals


def markdown(result: BenchResult) -> str:
    m = result.machine
    where = (f"{m['gpu']} (TF32 {'on' if m.get('tf32') else 'off'})" if m.get("gpu") else f"{m['device']}, BLAS: {m['blas']}")
    half = ", ".join(f"{k} {v:.0f}" for k, v in result.matmul_gflops_by_dtype.items())
    lines = [f"Machine: {m['platform']}, {m['cpus']} CPUs, mlx {m['mlx']} on {where}; "
             f"float32 matmul peak {result.matmul_gflops:.0f} GFLOP/s ("
             + ", ".join(f"{k} {v:.0f}" for k, v in result.matmul_gflops_by.items()) + ")"
             + (f"; half-precision matmul peaks (mlx; those levels' % peak): {half} GFLOP/s" if half else "")
             + f". Model {result.config['model']} at "
             f"{result.config['size']}x{result.config['size']}, {result.config.get('vae', 'tiny')} VAE; GFLOP per image: "
             + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in result.flops.items()) + ".", "",
             (f"Times: medians of {result.config['runs']} round(s), the levels and PyTorch taking turns call by call; "
              "ratios: medians of the rounds' ratios."), "",
             ("| level | batch | frame s | frame / float32 | fps | UNet s | VAE s | text enc. s/prompt | UNet GFLOP/s (% peak) "
              "| weights MiB | peak MiB | UNet rel L2 | frame PSNR dB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        err = f"{r['unet_rel_l2']:.4f}" if "unet_rel_l2" in r else "-"
        psnr = f"{r['frame_psnr']:.1f}" if r.get("frame_psnr") is not None else "-"
        ratio = f"{r['over_float32']['frame']:.2f}x" if "over_float32" in r else "-"
        lines.append(f"| {r['level']} | {r['batch']} | {r['frame_s']:.3f} | {ratio} | {r['fps']:.2f} | {r['unet_s']:.3f} | "
                     f"{r['vae_s']:.3f} | {r['text_encoder_s']:.3f} | {r['unet_gflops']:.0f} ({r['unet_peak_fraction']:.0%}) | "
                     f"{sum(r['weight_bytes'].values()) / 2**20:.0f} | {r['peak_memory'] / 2**20:.0f} | {err} | {psnr} |")
    for r in result.reference:
        ratio = r.get("mlx_over_pytorch", {})
        lines.append(f"| PyTorch float32 | {r['batch']} | {r['frame_s']:.3f} | | {r['fps']:.2f} | {r['unet_s']:.3f} | "
                     f"{r['vae_s']:.3f} | {r.get('text_encoder_s', 0):.3f} | {r['unet_gflops']:.0f} ({r['unet_peak_fraction']:.0%}) "
                     "| - | - | - | - |")
        if ratio:
            text = f"{ratio['text_encoder']:.2f}x" if "text_encoder" in ratio else ""
            lines.append(f"| MLX / PyTorch | {r['batch']} | {ratio['frame']:.2f}x | | | {ratio['unet']:.2f}x | "
                         f"{ratio['vae']:.2f}x | {text} | | | | | |")
    if result.reference_info:
        info = result.reference_info
        on = info.get("device", "cpu")
        lines += ["", f"PyTorch {info['torch']} ({info['threads']} threads; VAE {info.get('vae', 'AutoencoderTiny')}"
                  + (f"; on {info.get('device_name', on)}, TF32 {'on' if info.get('tf32') else 'off'}" if on != "cpu" else "")
                  + ") ran in a process of its own, without mlx-musicviz's BLAS; BLAS libraries mapped there: "
                  + (", ".join(info["blas_libraries"]) or "none") + "."]
    if result.layers:
        lines += ["", *_layers_markdown(result)]
    if result.profile:
        lines += ["", *_profile_markdown(result)]
    if result.render:
        r = result.render
        lines += ["", f"End-to-end render of {r['seconds']:.1f} s of audio ({r['frames']} frames): {r['total_s']:.1f} s; "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in r["times"].items())
                  + f"; outside the model {r['overhead_fraction']:.1%}."]
    if result.startup:
        from .startup import startup_summary

        lines += ["", "Start-up: " + startup_summary(result.startup) + "."]
    if result.live:
        from .run import live_summary

        lines += ["", "Live (a simulated page plays the song; no browser): " + live_summary(result.live) + "."]
    return "\n".join(lines) + "\n"


def _layers_markdown(result: BenchResult, largest: int = 8) -> list[str]:
    """The layer tables: per component and kind, and the shapes with the largest gaps to PyTorch."""
    with_reference = any("pytorch_s" in r for r in result.layers)
    lines = [("Convolutions and linear layers alone (float32; every distinct shape timed on its own"
              + (", in turns with PyTorch" if with_reference else "") + "; seconds a component call: calls x median "
              "of the shape's calls). \"other\" is the component's time in the table above less these: attention "
              "cores, norms, activations and copies; approximate, as a layer alone may run faster or slower than "
              "inside the model (negative: the layers alone took longer than the whole component)."), "",
             "| batch | component | kind | calls | MLX s | PyTorch s | MLX / PyTorch | MLX GFLOP/s | PyTorch GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cells(mlx_s, pytorch_s, flops):
        if pytorch_s is None:
            return f"{mlx_s:.3f} | - | - | {flops / mlx_s / 1e9:.0f} | -" if flops else f"{mlx_s:.3f} | - | - | - | -"
        rates = f"{flops / mlx_s / 1e9:.0f} | {flops / pytorch_s / 1e9:.0f}" if flops else "- | -"
        return f"{mlx_s:.3f} | {pytorch_s:.3f} | {mlx_s / pytorch_s:.2f}x | {rates}"

    totals = layer_totals(result.layers)
    for t in totals:
        lines.append(f"| {t['batch']} | {t['component']} | {t['kind']} | {t['calls']} | "
                     f"{cells(t['mlx_s'], t.get('pytorch_s'), t['flops'])} |")
    for batch in dict.fromkeys(t["batch"] for t in totals):
        row = next((r for r in result.rows if r["level"] == "float32" and r["batch"] == batch), None)
        ref = next((r for r in result.reference if r["batch"] == batch), None)
        for component in ("unet", "vae"):
            layers = [t for t in totals if t["batch"] == batch and t["component"] == component]
            if row is None or not layers:
                continue
            mlx_other = row[f"{component}_s"] * batch - sum(t["mlx_s"] for t in layers)
            torch_other = ref[f"{component}_s"] * batch - sum(t["pytorch_s"] for t in layers) if ref and with_reference else None
            lines.append(f"| {batch} | {component} | other | | {cells(mlx_other, torch_other, 0)} |")
    if with_reference:
        gaps = sorted(result.layers, key=lambda r: -r["calls"] * (r["mlx_s"] - r["pytorch_s"]))[:largest]
        lines += ["", f"Shapes with the largest gaps (calls x (MLX - PyTorch)), the first {len(gaps)}:", "",
                  "| batch | component | kind | input | weight | calls | MLX ms | PyTorch ms | MLX GFLOP/s | PyTorch GFLOP/s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in gaps:
            lines.append(f"| {r['batch']} | {r['component']} | {r['kind']} | {'x'.join(map(str, r['input']))} | "
                         f"{'x'.join(map(str, r['weight']))} | {r['calls']} | {r['mlx_s'] * 1e3:.1f} | "
                         f"{r['pytorch_s'] * 1e3:.1f} | {r['mlx_gflops']:.0f} | {r['pytorch_gflops']:.0f} |")
    return lines


def _profile_markdown(result: BenchResult) -> list[str]:
    with_reference = any("pytorch_s" in r for r in result.profile)
    lines = [("The float32 frame by kind of work (`--profile`; seconds an image, medians"
              + (", in turns with PyTorch" if with_reference else "") + "). MLX: every convolution, linear layer, "
              "attention core, norm and activation call is evaluated where it returns and charged its own time "
              "(less that of profiled calls inside it); that stops mlx from overlapping work across those "
              "boundaries, so a profiled call can take a little longer than a plain one."
              + (" PyTorch: torch.profiler's self time per operator. " if with_reference else " ")
              + "\"other\": the rest of the call (adds, copies, concatenations, the scheduler step)."), "",
             "| batch | kind | MLX s | PyTorch s | MLX / PyTorch | MLX - PyTorch s |", "|---|---|---|---|---|---|"]
    for r in result.profile:
        if "pytorch_s" in r:
            ratio = f"{r['mlx_over_pytorch']:.2f}x" if "mlx_over_pytorch" in r else "-"
            theirs = f"{r['pytorch_s']:.3f} | {ratio} | {r['mlx_s'] - r['pytorch_s']:+.3f}"
        else:
            theirs = "- | - | -"
        lines.append(f"| {r['batch']} | {r['kind']} | {r['mlx_s']:.3f} | {theirs} |")
    return lines


def chart(result: BenchResult, path: Path) -> None:
    """A PNG bar chart: frames per second per level, one bar per batch size."""
    from PIL import Image, ImageDraw

    rows = result.rows + result.reference
    levels = list(dict.fromkeys(r["level"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    top = max(r["fps"] for r in rows) * 1.15
    w, h, left, bottom = 120 + 110 * len(levels), 360, 60, 300
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    colors = [(52, 101, 164), (245, 121, 0), (78, 154, 6), (204, 0, 0), (117, 80, 123)]
    d.line([(left, 20), (left, bottom), (w - 20, bottom)], fill="black")
    for i in range(5):
        v = top * i / 4
        y = bottom - (bottom - 20) * i / 4
        d.text((5, y - 6), f"{v:.2f}", fill="black")
    bar = 90 / max(len(batches), 1)
    for i, level in enumerate(levels):
        x0 = left + 20 + i * 110
        d.text((x0, bottom + 8), level, fill="black")
        for j, b in enumerate(batches):
            r = next((r for r in rows if r["level"] == level and r["batch"] == b), None)
            if r is None:
                continue
            y = bottom - (bottom - 20) * r["fps"] / top
            d.rectangle([x0 + j * bar, y, x0 + (j + 1) * bar - 2, bottom], fill=colors[j % len(colors)])
    for j, b in enumerate(batches):
        d.rectangle([w - 90, 20 + 16 * j, w - 80, 30 + 16 * j], fill=colors[j % len(colors)])
        d.text((w - 75, 18 + 16 * j), f"batch {b}", fill="black")
    where = result.machine.get("gpu") or f"{result.machine['machine']} {result.machine['cpus']} CPUs"
    d.text((left, bottom + 30), f"frames per second, {result.config['model']} {result.config['size']}px, "
           f"{where} ({result.machine['device']})", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_outputs(result: BenchResult, out_dir: Path) -> list[Path]:
    from ..weights import write_json

    out_dir = Path(out_dir)
    write_json(out_dir / "results.json", json.loads(result.to_json()))
    (out_dir / "results.md").write_text(markdown(result), encoding="utf-8")
    chart(result, out_dir / "fps.png")
    return [out_dir / "results.json", out_dir / "results.md", out_dir / "fps.png"]
