"""`preview(prompt, output)`: stills of a prompt before a long render.

One image of the base prompt, or (`notes=True`) a contact sheet of the base prompt and its 12 note
prompts: the places the prompt walk goes. All from the latents where the noise walk's circle
starts for the same seed and size, so a still looks like the video where the walk has not moved.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from .audio import NOTE_NAMES
from .checks import check_dtype, check_inputs, frame_size
from .errors import MusicvizError
from .files import atomic_output, check_output_path
from .loading import pipeline_for
from .note_prompts import default_note_prompts
from .pipeline import DEFAULT_MODEL
from .scheduler import check_scheduler
from .walkers import circle_noise

SHEET_COLUMNS = 4
LABEL_HEIGHT = 24  # pixels of caption under each tile of a sheet


def preview_images(pipe, prompts: list[str], size, seed: int = 0, batch_size: int = 2,
                   vae: str = "auto") -> np.ndarray:
    """uint8 (len(prompts), height, width, 3): each prompt from the noise walk's starting latents
    (inputs as `preview` checks them)."""
    width, height = frame_size(size)
    start, _ = circle_noise(pipe.latent_shape(height, width)[1:], seed)
    embeds = pipe.encode_prompt(prompts)
    images = []
    for i in range(0, len(prompts), batch_size):  # bounded memory: a batch of images at a time
        chunk = embeds[i:i + batch_size]
        latents = mx.broadcast_to(start, (chunk.shape[0], *start.shape[1:]))
        images.append(np.array(pipe.generate(latents, chunk, vae=vae)))
    return np.concatenate(images)


def contact_sheet(images: np.ndarray, labels: list[str]):
    """A PIL image: the tiles in rows of SHEET_COLUMNS, each captioned underneath."""
    from PIL import Image, ImageDraw

    n, h, w, _ = images.shape
    rows = -(-n // SHEET_COLUMNS)
    sheet = Image.new("RGB", (SHEET_COLUMNS * w, rows * (h + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (image, label) in enumerate(zip(images, labels)):
        x, y = (k % SHEET_COLUMNS) * w, (k // SHEET_COLUMNS) * (h + LABEL_HEIGHT)
        sheet.paste(Image.fromarray(image), (x, y))
        draw.text((x + 4, y + h + 6), _fit(draw, label, w - 8), fill="black")
    return sheet


def _fit(draw, label: str, width: float) -> str:
    """`label` cut in the middle to fit `width` pixels: the head names the note, and the tail is where
    note prompts differ ("C: a city, fiery red hues" -> "C: ...y, fiery red hues")."""
    if draw.textlength(label) <= width:
        return label
    head, _, rest = label.partition(": ")
    head += ": "
    for keep in range(len(rest) - 1, 0, -1):
        cut = head + "..." + rest[-keep:]
        if draw.textlength(cut) <= width:
            return cut
    return head.strip()


def preview(prompt: str, output="preview.png", *, notes: bool = False, note_prompts=None, model=DEFAULT_MODEL,
            seed: int = 0, size=512, vae: str = "auto", batch_size: int = 2, loras=(), scheduler: str | None = None,
            steps: int = 1, dtype=None, pipeline=None) -> Path:
    """Write a still of `prompt` to `output` (PNG, JPEG, ...), or with `notes` a sheet of the prompt and
    its 12 note prompts (default: Scriabin's colours, as render derives them) captioned with their notes.

    loras: [(path, scale), ...] LoRA files fused into the model; scheduler, steps, dtype: as `load_pipeline` takes them.
    Costs one generation per image (13 with `notes`). Raises MusicvizError on bad input; the file is
    written atomically.
    """
    from PIL import Image

    check_inputs(prompt, seed, size, batch_size, note_prompts)
    check_scheduler(scheduler, steps)
    check_dtype(dtype)
    output = check_output_path(output, "preview.png")
    if output.suffix.lower() not in Image.registered_extensions():
        raise MusicvizError(f"cannot write images of type {output.suffix or '(none)'!r}: name the output .png or .jpg")
    prompts = [prompt]
    if notes or note_prompts is not None:
        prompts += list(note_prompts) if note_prompts is not None else default_note_prompts(prompt)
    pipe = pipeline_for(pipeline, model, loras, scheduler, steps, dtype)
    images = preview_images(pipe, prompts, size, seed, batch_size, vae)
    picture = contact_sheet(images, ["base: " + prompt] + [f"{n}: {p}" for n, p in zip(NOTE_NAMES, prompts[1:])]) \
        if len(prompts) > 1 else Image.fromarray(images[0])
    with atomic_output(output) as tmp:
        picture.save(tmp, format=Image.registered_extensions()[output.suffix.lower()])
    return output
