"""CLIP byte-pair-encoding tokenizer in pure Python.

Reads a checkpoint's `tokenizer/` folder in either form found in the wild: `vocab.json` +
`merges.txt` (the SDXS repos) or a single `tokenizer.json` (newer transformers), plus
`tokenizer_config.json` / `special_tokens_map.json` for the special tokens. Matches
transformers' CLIPTokenizer: NFC, whitespace runs folded to one space, lower case, CLIP's
pre-tokenizer pattern, byte-level symbols, BPE with the `</w>` end-of-word suffix.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from ..errors import MusicvizError

BUNDLED_VOCABULARY = Path(__file__).resolve().parent.parent / "data" / "clip-tokenizer"
START, END = "<|startoftext|>", "<|endoftext|>"
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# The text encoder has 77 positions; tokenizer configs that say otherwise (1e30) are not trusted.
TEXT_ENCODER_POSITIONS = 77
_WHITESPACE = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _kind(ch: str) -> str:
    if ch.isspace():
        return "s"
    cat = unicodedata.category(ch)[0]
    return cat if cat in "LN" else "p"


def pre_tokenize(text: str) -> list[str]:
    """Split normalized text with CLIP's pattern:
    specials | 's|'t|'re|'ve|'m|'ll|'d | letters+ | one digit | other non-space characters+."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        kind = _kind(ch)
        if kind == "s":
            i += 1
            continue
        special = next((s for s in (START, END) if text.startswith(s, i)), None)
        if special:
            out.append(special)
            i += len(special)
            continue
        if ch == "'":
            c = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
            if c:
                out.append(c)
                i += len(c)
                continue
        j = i + 1
        if kind == "L":
            while j < n and _kind(text[j]) == "L":
                j += 1
        elif kind == "p":
            while j < n and _kind(text[j]) == "p":
                j += 1
        out.append(text[i:j])
        i = j
    return out


def normalize(text: str) -> str:
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).lower()


class CLIPTokenizer:
    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        pad_token: str = END,
        bos_token: str = START,
        eos_token: str = END,
        model_max_length: int = TEXT_ENCODER_POSITIONS,
    ):
        self.vocab = vocab
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        for name, tok in (("pad", pad_token), ("bos", bos_token), ("eos", eos_token)):
            if tok not in vocab:
                raise MusicvizError(f"tokenizer: the {name} token {tok!r} is not in the vocabulary")
        self.pad_token, self.bos_token, self.eos_token = pad_token, bos_token, eos_token
        self.pad_token_id, self.bos_token_id, self.eos_token_id = vocab[pad_token], vocab[bos_token], vocab[eos_token]
        self.model_max_length = min(int(model_max_length), TEXT_ENCODER_POSITIONS)
        self._bytes = _byte_to_unicode()
        self._specials = {bos_token, eos_token, pad_token}
        alternatives = "|".join(re.escape(t) for t in sorted(self._specials, key=len, reverse=True))
        self._special_split = re.compile(f"({alternatives})")
        self._cache: dict[str, list[int]] = {}

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None) -> "CLIPTokenizer":
        """Load from a tokenizer folder; with no folder, the bundled CLIP vocabulary (pads with `<|endoftext|>`)."""
        folder = Path(folder) if folder is not None else BUNDLED_VOCABULARY
        if not folder.is_dir():
            raise MusicvizError(f"tokenizer folder not found: {folder}")
        special: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = folder / name
            if path.exists():
                data = _read_json(path)
                for key in ("pad_token", "bos_token", "eos_token", "model_max_length"):
                    if key in data and data[key] is not None:
                        value = data[key]
                        special[key] = value["content"] if isinstance(value, dict) else value
        if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            vocab = _read_json(folder / "vocab.json")
            merges = _read_merges((folder / "merges.txt").read_text(encoding="utf-8").splitlines())
        elif (folder / "tokenizer.json").exists():
            data = _read_json(folder / "tokenizer.json")
            model = data.get("model") or {}
            if model.get("type") != "BPE" or "vocab" not in model:
                raise MusicvizError(f"{folder / 'tokenizer.json'} is not a BPE tokenizer")
            vocab = dict(model["vocab"])
            for added in data.get("added_tokens", []):
                vocab.setdefault(added["content"], added["id"])
            merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model.get("merges", [])]
        else:
            raise MusicvizError(f"tokenizer folder {folder} has neither vocab.json + merges.txt nor tokenizer.json")
        return cls(vocab, merges, **special)

    def with_pad_token(self, pad_token: str) -> "CLIPTokenizer":
        """The same vocabulary padding with another token (SD2 family: `!`; SD1.5: `<|endoftext|>`)."""
        merges = sorted(self.ranks, key=self.ranks.get)
        return CLIPTokenizer(self.vocab, merges, pad_token, self.bos_token, self.eos_token, self.model_max_length)

    # -- encoding ----------------------------------------------------------------------
    def _bpe(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = [(self.ranks.get(p, None), k) for k, p in enumerate(zip(symbols, symbols[1:]))]
            best = min((r, k) for r, k in pairs if r is not None) if any(r is not None for r, _ in pairs) else None
            if best is None:
                break
            first, second = symbols[best[1]], symbols[best[1] + 1]
            merged, k = [], 0
            while k < len(symbols):
                if k < len(symbols) - 1 and symbols[k] == first and symbols[k + 1] == second:
                    merged.append(first + second)
                    k += 2
                else:
                    merged.append(symbols[k])
                    k += 1
            symbols = merged
        unk = self.vocab.get(END)
        ids = [self.vocab.get(s, unk) for s in symbols]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without start/end tokens, padding or truncation.

        As in transformers, the special tokens (start, end, pad) are matched in the raw text
        first, so with sdxs-512-0.9's pad token `!` every `!` in a prompt becomes id 0.
        """
        ids: list[int] = []
        for segment in self._special_split.split(text):
            if not segment:
                continue
            if segment in self._specials:
                ids.append(self.vocab[segment])
                continue
            for piece in pre_tokenize(normalize(segment)):
                if piece in (START, END):
                    ids.append(self.vocab[piece])
                    continue
                ids.extend(self._bpe("".join(self._bytes[b] for b in piece.encode("utf-8"))))
        return ids

    def __call__(self, texts: str | list[str], max_length: int | None = None) -> list[list[int]]:
        """Ids padded and truncated to `max_length` (77): [start] + text[:75] + [end] + [pad]*."""
        if isinstance(texts, str):
            texts = [texts]
        n = min(max_length or self.model_max_length, self.model_max_length)
        out = []
        for text in texts:
            ids = [self.bos_token_id] + self.tokenize(text)[: n - 2] + [self.eos_token_id]
            out.append(ids + [self.pad_token_id] * (n - len(ids)))
        return out

    def count_tokens(self, text: str) -> int:
        """Number of text tokens (start/end excluded); more than `model_max_length - 2` get truncated."""
        return len(self.tokenize(text))

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
        merges = sorted(self.ranks, key=self.ranks.get)
        (folder / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
        )
        config = {
            "pad_token": self.pad_token,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "model_max_length": self.model_max_length,
            "tokenizer_class": "CLIPTokenizer",
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MusicvizError(f"{path} is not valid JSON ({e})") from None


def _read_merges(lines: list[str]) -> list[tuple[str, str]]:
    merges = []
    for line in lines:
        if not line or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges
