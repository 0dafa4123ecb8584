"""The pure-Python CLIP tokenizer gives transformers' ids on the real vocabulary."""

import json
import random
import shutil

import pytest
from reference import VOCAB, build_tokenizer

from mlx_musicviz.models import CLIPTokenizer

BASE = [
    "a photo of an astronaut riding a horse on mars",
    "Hello, World!!! It's 3.14159 o'clock; we'll see...",
    "日本語のテキスト、カフェ☕ and émojis 🎸🎹🥁",
    "  multiple   spaces\tand\nnewlines ",
    "naïve café Ünïcödé ǅ ß ﬁ İstanbul ΑΒΓ σς",
    "1234567890 $100.00 #hashtag @user e-mail: a.b@c.d",
    "<|endoftext|> weird <|startoftext|> tokens",
    "'s 're'', ''ll !'s I'M YOU'RE they'VE",
    "",
    "!!!???...---***",
    "x" * 400,
    " ".join(["long prompt"] * 60),
    "Ꭰ Ꮳ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ＦＵＬＬＷＩＤＴＨ ١٢٣ ๑๒๓",
    "tab\tseparated\u00a0nbsp\u2003em-space\u200bzero-width",
]
WORDS = ("neon", "city", "at", "night", "oil", "painting", "of", "a", "cat", "trumpet", "jazz", "ÉTÉ", "naïve",
         "🎷", "🌊", "☀️", "2049", "3.5", "don't", "it's", "!", "?", ",", "...", "—", "(", ")", "[x]", "$", "%",
         "東京", "über", "Straße", "ﬂow", "Ωmega", "\n", "\t", "  ", "C#", "Bb", "8k", "HDR", "f/1.8", "~", "@")


def prompts():
    rng = random.Random(0)
    out = list(BASE)
    while len(out) < 300:
        out.append("".join(rng.choice(WORDS) + rng.choice(("", " ", " ", "  ")) for _ in range(rng.randint(1, 40))))
    return out


@pytest.fixture(scope="module", params=["!", "<|endoftext|>"])
def pad(request):
    return request.param


def _mine(pad, form, tmp_path):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    if form == "vocab+merges":
        shutil.copy(VOCAB / "vocab.json", folder)
        shutil.copy(VOCAB / "merges.txt", folder)
        (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
        (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    else:
        build_tokenizer(pad).save_pretrained(folder)
        for name in ("vocab.json", "merges.txt"):
            (folder / name).unlink(missing_ok=True)
        assert (folder / "tokenizer.json").exists()
    return CLIPTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("form", ["vocab+merges", "tokenizer.json"])
def test_ids_match_transformers(tmp_path, pad, form):
    ref = build_tokenizer(pad)
    mine = _mine(pad, form, tmp_path)
    assert mine.model_max_length == 77  # never trusts model_max_length: 1e30
    assert mine.pad_token_id == ref.pad_token_id
    texts = prompts()
    expected = ref(texts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    got = mine(texts)
    mismatches = [(t, g, e) for t, g, e in zip(texts, got, expected) if g != e]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, first: {mismatches[0]}"
    assert all(len(ids) == 77 for ids in got)


def test_pad_conventions_differ():
    """sdxs-512-0.9 pads with `!` (id 0), SD1.5 with <|endoftext|> (49407)."""
    assert CLIPTokenizer.from_pretrained()(["cat"])[0][-1] == 49407
    bang = CLIPTokenizer.from_pretrained()
    bang = CLIPTokenizer(bang.vocab, sorted(bang.ranks, key=bang.ranks.get), pad_token="!")
    assert bang(["cat"])[0][-1] == 0


def test_bundled_vocabulary_works_without_a_folder():
    ids = CLIPTokenizer.from_pretrained()(["a cat"])[0]
    assert ids[:4] == [49406, 320, 2368, 49407]
