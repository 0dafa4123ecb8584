"""The optional language model that writes the 12 note prompts (mlx-lm).

No real model can be downloaded here, so the end-to-end tests use a small Llama-architecture model
trained in the test to answer two requests (the instruction for PROMPT and for OTHER_PROMPT, in
its chat template) with two different replies: the model answers what it was asked.
"""

import json
import sys

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import mlx_lm
import pytest
from render_helpers import cli

from mlx_musicviz.audio import NOTE_NAMES
from mlx_musicviz.errors import MusicvizError
from mlx_musicviz.note_prompts import read_note_prompts
from mlx_musicviz.note_writer import instruction, parse_note_prompts, write_note_prompts

PROMPT = "a coral reef, oil painting"
COLOURS = ("red", "violet", "yellow", "steel", "pearl", "crimson", "blue", "orange", "purple", "green",
           "rose", "sky")
EXPECTED = [f"a coral reef in {c} light, oil painting" for c in COLOURS]
# As small models answer: a sentence first, numbered lines, bold and flat names, a closing remark.
REPLY = "\n".join(
    ["Here are the 12 prompts:", ""]
    + [f"{i + 1}. **{name}**: {text}" for i, (name, text) in
       enumerate(zip(("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"), EXPECTED))]
    + ["", "Enjoy the video!"])
OTHER_PROMPT = "a desert at dusk"
OTHER_EXPECTED = [f"a desert at dusk, {c} sky" for c in reversed(COLOURS)]
OTHER_REPLY = "\n".join(f"{name}: {text}" for name, text in zip(NOTE_NAMES, OTHER_EXPECTED))
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def tiny_language_model(folder, train_steps):
    """An mlx-lm checkpoint (Llama, 2 layers of width 64, byte-level BPE, chat template) in `folder`,
    trained for `train_steps` steps, in turns, on the requests for PROMPT and OTHER_PROMPT followed by
    their replies."""
    from mlx_lm.models import llama
    from mlx_lm.utils import save_config, save_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    conversations = [(instruction(PROMPT), REPLY), (instruction(OTHER_PROMPT), OTHER_REPLY)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([text for pair in conversations for text in pair], trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|end|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|end|>", chat_template=CHAT_TEMPLATE)
    tokenizer.save_pretrained(folder)
    sequences = [mx.array(tokenizer.encode(chat_request(tokenizer, request) + reply + "<|end|>"))[None]
                 for request, reply in conversations]

    args = llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5,
                           vocab_size=len(tokenizer), tie_word_embeddings=True, max_position_embeddings=1024)
    mx.random.seed(0)
    model = llama.Model(args)

    def loss(m, tokens):
        return nn.losses.cross_entropy(m(tokens[:, :-1]), tokens[:, 1:]).mean()

    optimizer, step = optim.Adam(learning_rate=3e-3), nn.value_and_grad(model, loss)
    for i in range(train_steps):
        _, grads = step(model, sequences[i % 2])
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
    save_model(folder, model)
    save_config({**vars(args), "eos_token_id": tokenizer.eos_token_id}, folder / "config.json")
    return folder


def chat_request(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_language_model(tmp_path_factory.mktemp("lm") / "trained", train_steps=300)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    return tiny_language_model(tmp_path_factory.mktemp("lm") / "untrained", train_steps=0)


def test_the_reply_is_read_line_by_line():
    assert [parse_note_prompts(REPLY)[i] for i in range(12)] == EXPECTED
    assert parse_note_prompts("C#/Db: a\n- D♭: b\nG sharp (A flat) = c\n`B`: 'd'\nA coral reef: e\n<think>E: f</think>") \
        == {1: "a", 8: "c", 11: "d"}
    assert parse_note_prompts("NOTE E: a\nC Major: b\nD minor (Dorian): c\nb: d\nCb: e") == {4: "a", 0: "b", 2: "c", 11: "e"}
    assert parse_note_prompts("Chorus: x\nBridge: y\nE:   \nF: ") == {}
    assert parse_note_prompts("\n".join(f"{n}: p{i}" for i, n in enumerate(NOTE_NAMES)) + "\nC: again") \
        == {i: f"p{i}" for i in range(12)}


def recording_generate(monkeypatch):
    """mlx_lm.generate, recording each call's request and reply in the list it returns."""
    calls, real = [], mlx_lm.generate

    def generate(model, tokenizer, request, **kwargs):
        calls.append((request, real(model, tokenizer, request, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(mlx_lm, "generate", generate)
    return calls


def test_a_language_model_writes_the_note_prompts(trained, monkeypatch):
    calls = recording_generate(monkeypatch)
    assert write_note_prompts(PROMPT, str(trained)) == EXPECTED
    assert write_note_prompts(OTHER_PROMPT, str(trained)) == OTHER_EXPECTED
    tokenizer = mlx_lm.load(str(trained))[1]
    assert [request for request, _ in calls] == [chat_request(tokenizer, instruction(p)) for p in (PROMPT, OTHER_PROMPT)]
    assert PROMPT in instruction(PROMPT) and "NOTE: prompt" in instruction(PROMPT)


def test_cli_writes_a_note_prompt_file(trained, tmp_path):
    result = cli("note-prompts", "-p", PROMPT, "--lm", str(trained))
    assert result.returncode == 0, result.stderr
    assert f"writing the note prompts with {trained}" in result.stderr
    (tmp_path / "notes.txt").write_text(result.stdout)
    assert read_note_prompts(tmp_path / "notes.txt") == EXPECTED


def test_an_incomplete_reply_is_asked_again_then_refused(untrained, monkeypatch):
    calls = recording_generate(monkeypatch)
    with pytest.raises(MusicvizError, match=r"wrote prompts for \d+ of the 12 notes in 2 attempts \(missing: C, "):
        write_note_prompts(PROMPT, str(untrained), attempts=2)
    assert len(calls) == 2 and calls[0][1] != calls[1][1]  # the second one sampled


def test_clear_errors(tmp_path, monkeypatch):
    for kwargs, message in (({"attempts": 0}, "attempts must be at least 1"),
                            ({"temperature": -1.0}, "temperature must be 0 or more"),
                            ({"temperature": float("nan")}, "temperature must be 0 or more"),
                            ({"temperature": float("inf")}, "temperature must be 0 or more"),
                            ({"seed": -1}, "seed must be an integer from 0")):
        with pytest.raises(MusicvizError, match=message):
            write_note_prompts(PROMPT, str(tmp_path), **kwargs)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(MusicvizError, match="cannot load the language model"):
        write_note_prompts(PROMPT, str(broken))
    result = cli("note-prompts", "-p", PROMPT, "--seed", "3")
    assert result.returncode == 2 and "--seed goes with --lm" in result.stderr and not result.stdout
    for args, message in ((["--lm", str(tmp_path / "missing")], "model not found"),
                          (["--lm", str(broken)], "cannot load the language model")):
        result = cli("note-prompts", "-p", PROMPT, *args)
        assert result.returncode == 1 and result.stderr.splitlines()[-1].startswith(f"error: {message}")
        assert "Traceback" not in result.stderr
    monkeypatch.setitem(sys.modules, "mlx_lm", None)  # as if the extra were not installed
    with pytest.raises(MusicvizError, match=r'needs mlx-lm: pip install "mlx-musicviz\[lm\]"'):
        write_note_prompts(PROMPT, str(broken))
