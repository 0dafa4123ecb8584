"""An optional small language model (mlx-lm) that writes the 12 note prompts from one prompt.

Without it the note prompts are the prompt in Scriabin's colour for each note
(`walkers.default_note_prompts`). With it, an instruction-tuned model rewrites the prompt once per
pitch class, C to B; the reply is read line by line (`parse_note_prompts`), so numbering, markdown,
flats and a sentence before the list do not matter. mlx-lm is an extra: `pip install
"mlx-musicviz[lm]"`.
"""

from __future__ import annotations

import re

from .audio import NOTE_NAMES
from .errors import MusicvizError

# Instruction-tuned and small enough for a laptop (about 0.9 GB at 4 bits); its replies are
# not seen here (no download from this machine).
DEFAULT_NOTE_WRITER = "mlx-community/Qwen2.5-1.5B-Instruct-4bit"
# What an mlx-lm checkpoint needs: config, weights, tokenizer (BPE, SentencePiece or tiktoken) and
# chat template. No *.py: remote code is never run.
LM_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
MAX_TOKENS = 900  # 12 lines of at most ~25 words, with room for a sentence around them
RETRY_TEMPERATURE = 0.7  # a greedy reply that misses notes would only repeat itself

INSTRUCTION = """\
Write 12 prompts for a text-to-image model, one for each note of the chromatic scale: \
C, C#, D, D#, E, F, F#, G, G#, A, A#, B. A music video drifts toward a note's image while that \
note sounds, so every prompt keeps the subject and style of this prompt:

{prompt}

and changes its colours, light, mood or setting the way that note feels to you. Keep each prompt \
under 25 words. Reply with exactly 12 lines, each in the form `NOTE: prompt` (for example \
`F#: ...`), and nothing else."""

# A line that starts with a note's name: "F#: ...", "2. Db - ...", "- **A♭**: ...", "G sharp: ...",
# "C#/Db: ...", "Note E: ...", "A minor: ...".
_NOTE_LINE = re.compile(
    r"""^\s*(?:[-*•]\s*|\d{1,2}\s*[.)]\s*)?[*_`"']*(?i:note\ )?  # a bullet or a number, "Note"
        ([A-G])(\#|♯|b|♭|\ sharp|\ flat)?                   # the note, perhaps bold or quoted
        (?:\s*/\s*[A-G](?:\#|♯|b|♭)?)?                      # its other name
        (?:\ (?i:major|minor|natural|note))?[*_`"']*         # a word after it
        \s*(?:\([^)]*\))?\s*[:=–—-]\s*(.*)$                # "(D flat)" or the like, a separator
    """, re.VERBOSE)
_NATURALS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def instruction(prompt: str) -> str:
    """The request the language model gets for `prompt` (one user message)."""
    return INSTRUCTION.format(prompt=prompt.strip())


def parse_note_prompts(reply: str) -> dict[int, str]:
    """The note prompts in a language model's `reply`: {pitch class (0 = C, ..., 11 = B): prompt}.

    Lines that do not start with a note's name are skipped; flats and sharps are read as pitch
    classes (Db = C#); the first line for a note counts. A `<think>...</think>` block is ignored.
    """
    reply = re.sub(r"<think>.*?</think>", "", reply, flags=re.DOTALL)
    prompts: dict[int, str] = {}
    for line in reply.splitlines():
        match = _NOTE_LINE.match(line)
        if not match:
            continue
        letter, accidental, text = match.groups()
        text = text.strip().strip("*_`\"'").strip()
        if not text:
            continue
        accidental = (accidental or "").strip()
        shift = 1 if accidental in ("#", "♯", "sharp") else -1 if accidental in ("b", "♭", "flat") else 0
        prompts.setdefault((_NATURALS[letter] + shift) % 12, text)
    return prompts


def write_note_prompts(prompt: str, model: str = DEFAULT_NOTE_WRITER, *, temperature: float = 0.0,
                       seed: int = 0, attempts: int = 3, revision: str | None = None) -> list[str]:
    """Twelve note prompts (C, C#, ..., B) for `prompt`, written by a language model with mlx-lm.

    model: an mlx-lm checkpoint folder or hub repo id (downloaded once with huggingface_hub).
    temperature: 0 decodes greedily (the same prompts every time); above 0 samples, seeded by `seed`.
    attempts: replies that miss a note are asked again, sampling at 0.7 or more, this many times in all.
    Raises MusicvizError (mlx-lm missing, model not found or unreadable, no complete reply).
    """
    from .checks import check_prompt
    from .convert.hub import resolve_source  # here, not above: the CLI imports this module at start

    check_prompt(prompt)
    if attempts < 1:
        raise MusicvizError("attempts must be at least 1")
    if not 0 <= temperature < float("inf"):  # nan fails too
        raise MusicvizError(f"temperature must be 0 or more, got {temperature}")
    if not isinstance(seed, int) or not 0 <= seed < 2**64 - attempts:
        raise MusicvizError(f"seed must be an integer from 0 to 2**64 - {attempts + 1}, got {seed}")
    try:
        import mlx.core as mx
        from mlx_lm import generate, load
        from mlx_lm.sample_utils import make_sampler
    except ImportError:
        raise MusicvizError('writing note prompts with a language model needs mlx-lm: '
                            'pip install "mlx-musicviz[lm]"') from None
    folder, _ = resolve_source(model, revision, allow_patterns=LM_FILES)
    try:
        lm, tokenizer = load(str(folder))
    except Exception as e:  # mlx-lm raises what its loaders raise: missing files, unknown architectures
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MusicvizError(f"cannot load the language model {model}: {first}") from None
    request = instruction(prompt)
    if getattr(tokenizer, "chat_template", None):
        request = tokenizer.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True,
                                                tokenize=False)
    else:  # a base model: the instruction as plain text
        request += "\n\n"
    found: dict[int, str] = {}
    try:
        for attempt in range(attempts):
            temp = temperature if attempt == 0 else max(temperature, RETRY_TEMPERATURE)
            mx.random.seed(seed + attempt)  # mlx-lm's samplers draw from mlx's global generator
            reply = generate(lm, tokenizer, request, max_tokens=MAX_TOKENS, sampler=make_sampler(temp))
            found = parse_note_prompts(reply)
            if len(found) == 12:
                return [found[i] for i in range(12)]
    finally:  # a render in the same process should not find the language model's memory cached
        del lm
        mx.clear_cache()
    missing = ", ".join(NOTE_NAMES[i] for i in range(12) if i not in found)
    raise MusicvizError(f"the language model wrote prompts for {len(found)} of the 12 notes in {attempts} "
                        f"attempt{'s' if attempts > 1 else ''} (missing: {missing}); try another --seed or "
                        "model, or start from the note prompts without --lm")
