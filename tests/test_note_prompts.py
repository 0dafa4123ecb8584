"""Note-prompt files: `note-prompts` writes what render derives, render reads them back; the format
(labels, comments, order) and bad files."""

import numpy as np
import pytest
from render_helpers import TRUMPET, cli, decoded_frames, refused

from mlx_musicviz import render
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.note_prompts import default_note_prompts, note_prompts_text, read_note_prompts


def test_note_prompt_file(tmp_path):
    """`note-prompts` writes the prompts render derives; render reads them back with --note-prompts
    (same video), and an edited file, another beat grid or less motion changes the video."""
    made = cli("note-prompts", "-p", "a trumpet in neon light")
    assert made.returncode == 0, made.stderr
    assert read_note_prompts_text(tmp_path, made.stdout) == default_note_prompts("a trumpet in neon light")
    (tmp_path / "notes.txt").write_text(made.stdout)
    (tmp_path / "edited.txt").write_text(made.stdout.replace("hues", "shapes, a dragon"))
    common = [str(TRUMPET), "-p", "a trumpet in neon light", "--model", "random:tiny", "--size", "64", "--fps", "6",
              "--duration", "3"]
    runs = {"plain": [], "file": ["--note-prompts", str(tmp_path / "notes.txt")],
            "edited": ["--note-prompts", str(tmp_path / "edited.txt")], "whole": ["--beat-grid", "whole"],
            "calm": ["--motion", "0.05"]}
    frames = {}
    for name, extra in runs.items():
        r = cli("render", *common, *extra, "-o", str(tmp_path / f"{name}.mp4"))
        assert r.returncode == 0, r.stderr
        frames[name] = decoded_frames(tmp_path / f"{name}.mp4").astype(float)
    assert np.array_equal(frames["plain"], frames["file"])
    for changed in ("edited", "whole", "calm"):  # random weights saturate the pixels: small but certain differences
        per_frame = np.abs(frames["plain"] - frames[changed]).mean(axis=(1, 2, 3))
        assert (per_frame > 0.1).mean() > 0.5, per_frame  # measured: 0.4-1.1 in every frame


def read_note_prompts_text(tmp_path, text):
    (tmp_path / "prompts.txt").write_text(text)
    return read_note_prompts(tmp_path / "prompts.txt")


def test_note_prompt_file_format(tmp_path):
    plain = [f"prompt {i}" for i in range(12)]
    assert read_note_prompts_text(tmp_path, "\n".join(plain)) == plain
    assert read_note_prompts_text(tmp_path, note_prompts_text(plain)) == plain
    commented = "# my notes\n\n" + "\n\n".join(f"  {p}  " for p in plain) + "\n# end\n"
    assert read_note_prompts_text(tmp_path, commented) == plain
    # a colon that is not a note label belongs to the prompt
    assert read_note_prompts_text(tmp_path, "\n".join(["city: night"] + plain[1:]))[0] == "city: night"
    for text, needle in (("\n".join(plain[:11]), "found 11"), ("\n".join(plain + ["x"]), "found 13"),
                         (note_prompts_text(plain).replace("C#:", "D:"), "the prompt for C# is labelled D"),
                         (note_prompts_text(plain).replace("G: prompt 7", "G:  "), "the prompt for G is empty")):
        with pytest.raises(MusicvizError, match=needle):
            read_note_prompts_text(tmp_path, text)
    (tmp_path / "bom.txt").write_text(note_prompts_text(plain), encoding="utf-8-sig")  # as Windows editors save
    assert read_note_prompts(tmp_path / "bom.txt") == plain
    (tmp_path / "utf16.txt").write_bytes("\n".join(plain).encode("utf-16"))
    for path in (tmp_path / "utf16.txt", tmp_path / "missing.txt"):
        with pytest.raises(MusicvizError, match="cannot read note prompts"):
            read_note_prompts(path)


def test_bad_prompt_files_and_prompts(tmp_path):
    (tmp_path / "two.txt").write_text("a\nb\n")
    refused(tmp_path, [str(TRUMPET), "-p", "x", "--note-prompts", str(tmp_path / "two.txt")], "need 12 note prompts")
    refused(tmp_path, [str(TRUMPET), "-p", "x", "--note-prompts", str(tmp_path / "none.txt")], "cannot read")
    refused(tmp_path, [str(TRUMPET), "-p", "x", "--section-prompt", "a", "--section-prompt", " "], "section prompt is empty")
    with pytest.raises(MusicvizError, match="note prompt is empty"):
        render(str(TRUMPET), "x", output=tmp_path / "x.mp4", model="random:tiny", size=64,
               note_prompts=["a"] * 11 + [""])
    r = cli("note-prompts", "-p", " ")
    assert r.returncode == 1 and r.stderr.startswith("error: the prompt is empty")
