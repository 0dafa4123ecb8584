"""The 12 note prompts (C to B) the prompt walk moves toward: the default ones derived from a prompt,
and note-prompt files (`NOTE: prompt` lines) read and written. `note_writer` has a language model
write them instead."""

from __future__ import annotations

from pathlib import Path

from .audio import NOTE_NAMES
from .errors import MusicvizError

# Scriabin's colour keyboard, one colour per pitch class (C first).
SCRIABIN_COLORS = (
    "fiery red", "violet", "sunlit yellow", "steely blue", "pearly sky blue", "deep crimson",
    "bright electric blue", "rosy orange", "purple", "emerald green", "rose and steel", "pearly blue",
)


def default_note_prompts(prompt: str) -> list[str]:
    """Twelve note prompts from one prompt: the prompt in the colour Scriabin heard for each note."""
    return [f"{prompt}, {color} hues" for color in SCRIABIN_COLORS]


def note_prompts_text(prompts: list[str]) -> str:
    """The 12 note prompts as a note-prompt file (`read_note_prompts`): one `NOTE: prompt` line each."""
    if len(prompts) != 12:
        raise MusicvizError(f"need 12 note prompts (C to B), got {len(prompts)}")
    lines = ["# one prompt per note, C to B; the note labels are optional, '#' starts a comment"]
    return "\n".join(lines + [f"{note}: {p}" for note, p in zip(NOTE_NAMES, prompts)]) + "\n"


def read_note_prompts(path) -> list[str]:
    """The 12 note prompts (C, C#, ..., B) in a UTF-8 text file: one per line, in that order.

    Blank lines and lines starting with '#' are skipped. A line may start with its note's name and a
    colon (`F#: ...`, as `note_prompts_text` writes); a label that names another note is an error,
    so a line out of order cannot go unnoticed.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a byte-order mark would hide the first label
    except (OSError, UnicodeDecodeError) as e:
        raise MusicvizError(f"cannot read note prompts from {path}: {getattr(e, 'strerror', None) or e}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if len(lines) != 12:
        raise MusicvizError(f"{path}: need 12 note prompts (C to B), one per line; found {len(lines)}")
    prompts = []
    for expected, line in zip(NOTE_NAMES, lines):
        label, colon, rest = line.partition(":")
        if colon and label.strip() in NOTE_NAMES:
            if label.strip() != expected:
                raise MusicvizError(f"{path}: the prompt for {expected} is labelled {label.strip()}; "
                                    f"keep the order C, C#, D, ..., B")
            line = rest.strip()
        if not line:
            raise MusicvizError(f"{path}: the prompt for {expected} is empty")
        prompts.append(line)
    return prompts
