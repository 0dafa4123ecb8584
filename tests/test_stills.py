"""Stills before a render: the base prompt from the noise walk's start, and the 13-prompt sheet."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mlx_musicviz import load_pipeline, preview
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.note_prompts import default_note_prompts, note_prompts_text
from mlx_musicviz.stills import LABEL_HEIGHT, SHEET_COLUMNS
from mlx_musicviz.walkers import circle_noise

PROMPT = "a lighthouse in a storm"


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("random:tiny")


def expected(pipe, prompt, width, height, seed):
    start, _ = circle_noise(pipe.latent_shape(height, width)[1:], seed)
    return np.array(pipe.generate(start, pipe.encode_prompt([prompt])))[0]


def tile(sheet, k, width, height):
    x, y = (k % SHEET_COLUMNS) * width, (k // SHEET_COLUMNS) * (height + LABEL_HEIGHT)
    return sheet[y:y + height, x:x + width]


def test_still_is_the_prompt_from_the_walks_start(pipe, tmp_path):
    out = preview(PROMPT, tmp_path / "still.png", pipeline=pipe, seed=3, size="128x64")
    got = np.asarray(Image.open(out))
    assert got.shape == (64, 128, 3)
    assert np.array_equal(got, expected(pipe, PROMPT, 128, 64, 3))
    assert not np.array_equal(got, expected(pipe, PROMPT, 128, 64, 4))  # the seed matters
    assert sorted(p.name for p in tmp_path.iterdir()) == ["still.png"]  # no temporary file left


def test_sheet_of_the_base_and_note_prompts(pipe, tmp_path):
    out = preview(PROMPT, tmp_path / "sheet.png", notes=True, pipeline=pipe, size=64, batch_size=5)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (4 * (64 + LABEL_HEIGHT), SHEET_COLUMNS * 64, 3)
    prompts = [PROMPT] + default_note_prompts(PROMPT)
    for k in (0, 1, 12):  # the base, C and B, across batches of 5
        assert np.array_equal(tile(sheet, k, 64, 64), expected(pipe, prompts[k], 64, 64, 0)), k
    captions = sheet[64:64 + LABEL_HEIGHT, :64]
    assert (captions < 128).any() and (captions > 128).any()  # a caption is written under a tile
    own = [f"note {n}, a glass prism" for n in range(12)]
    out = preview(PROMPT, tmp_path / "own.jpg", note_prompts=own, pipeline=pipe, size=64)
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (SHEET_COLUMNS * 64, 4 * (64 + LABEL_HEIGHT))


def test_bad_input(pipe, tmp_path):
    for kwargs, needle in (({"size": 100}, "not supported"), ({"seed": -1}, "seed"),
                           ({"note_prompts": ["x"] * 11}, "12 note prompts")):
        with pytest.raises(MusicvizError, match=needle):
            preview(PROMPT, tmp_path / "x.png", pipeline=pipe, **kwargs)
    with pytest.raises(MusicvizError, match="cannot write images of type '.mp4'"):
        preview(PROMPT, tmp_path / "x.mp4", pipeline=pipe)
    assert list(tmp_path.iterdir()) == []


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "preview", *args], capture_output=True, text=True)


def test_cli(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text(note_prompts_text([f"{PROMPT}, in {n} light" for n in range(12)]))
    r = cli("-p", PROMPT, "--model", "random:tiny", "--size", "64", "--note-prompts", str(notes),
            "-o", str(tmp_path / "sheet.png"))
    assert r.returncode == 0, r.stderr
    assert "13 images" in r.stdout and Image.open(tmp_path / "sheet.png").size == (256, 4 * (64 + LABEL_HEIGHT))
    notes.write_text("one\ntwo\n")
    for args, needle in ((["--note-prompts", str(notes)], "need 12 note prompts"),
                         (["-o", str(tmp_path / "missing" / "x.png")], "output folder does not exist"),
                         (["-o", str(tmp_path / "x.txt")], "cannot write images"), (["--size", "65"], "not supported")):
        r = cli("-p", PROMPT, "--model", "random:tiny", "--size", "64", *args)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], r.stderr
    r = cli("-p", " ", "--model", "random:tiny")
    assert r.returncode == 1 and "prompt is empty" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "sheet.png"]
