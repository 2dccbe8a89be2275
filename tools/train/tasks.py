"""Synthetic long-context retrieval tasks (RULER-style), pure Python standard library.

Used by tools/train/train.py (training data and its quick in-script evaluation) and by the
retrieval benchmark (evaluation through the server), so both see exactly the same cases.

Stable API
----------
    TASKS                       ("passkey", "multikey", "multivalue", "vartrack")
    make_case(task, length, seed, haystack, count_tokens=None) -> dict
        {"task", "prompt", "answer", "items", "length", "seed"}
        prompt: the text to send (no BOS; the tokenizer adds it); it ends right before the answer
        answer: what the model should produce right after the prompt, beginning with a space
                (e.g. prompt "... The pass key is", answer " 71432"); greedy decoding should give
                it followed by end-of-sequence (the model was trained with "</s>" after it)
        items:  the answer's parts ([" 71432"] -> ["71432"]; multivalue and vartrack have several)
    score(case, output_text) -> float in [0, 1]
        RULER's string-match metric: the fraction of case["items"] found in output_text (the
        model's continuation); the first line only, so text after the answer cannot add hits.
    load_corpus(path) -> list[str]     the documents of corpus.txt (tools/train/make_corpus.py;
                                       corpus.txt.gz too)
    load_haystack(path) -> Haystack    the haystack source: the corpus' documents joined
    CHARS_PER_TOKEN                    haystack characters per token of the demo model's tokenizer

Seeds: training uses seeds in [0, TRAIN_SEED_LIMIT) = [0, 10**9); evaluation uses seeds
>= EVAL_SEED_BASE = 10**9 (e.g. EVAL_SEED_BASE + i for the i-th case), so evaluation cases never
occur in training. A case depends only on (task, length, seed, the haystack text, count_tokens):
the same arguments give the same case on any Python 3 (random.Random seeded with a string).

Length: `length` is the prompt's length in tokens. With count_tokens (a callback str -> number of
tokens, e.g. lambda s: len(sp.encode(s))) the prompt is fitted to at most `length` tokens and
within about 1% of it; without one the haystack is sized with CHARS_PER_TOKEN and a prompt's real
length is typically within +-10% of `length` (measured on the demo model's corpus and tokenizer).

Tasks (after RULER, Hsieh et al. 2024; the haystack is natural text from the corpus):
  passkey     one pass key (5 digits) hidden in the text; ask for it
  multikey    4 needles "The special magic number for KEY is VALUE." with different keys; ask one
  multivalue  4 needles for the same key, each with its own value; ask for all, in text order
  vartrack    a chain "VAR A = 12345." "VAR B = VAR A." ... of 5 variables and a distractor
              chain with another value; ask which variables hold the first chain's value
"""

import bisect
import gzip
import random
import re

TASKS = ("passkey", "multikey", "multivalue", "vartrack")
TRAIN_SEED_LIMIT = 10**9
EVAL_SEED_BASE = 10**9

# Haystack characters per token of models/sals-tiny-retrieval's tokenizer on its corpus (measured
# over 2,000 random 8K-character excerpts by prepare.py: mean 3.51, 5th-95th percentile 2.8-4.0).
CHARS_PER_TOKEN = 3.5

DOC_SEPARATOR = "\n\f\n"

# Words for needle keys ("silent-harbor"): common, unambiguous, distinct.
ADJECTIVES = (
    "amber ancient autumn bitter black blue bold brave bright broken calm clever cold cool crimson "
    "curious dark deep distant dry dusty eager early empty fading fancy fierce flat frozen gentle "
    "golden grand green grey hidden hollow honest humble icy jolly kind late lazy little lively "
    "lonely lost loud lucky mellow merry misty modern narrow noble odd old orange pale patient "
    "plain polite proud purple quick quiet rapid rare red rough round royal rusty sandy secret "
    "sharp shiny short silent silver simple sleepy slow small smooth soft solid sour spare steady "
    "still stormy strange strong sunny sweet swift tall tame tender thin tiny tired quiet warm "
    "white wild windy wise wooden young"
).split()
NOUNS = (
    "anchor apple arrow badger banner barrel basket beacon bell berry blossom bottle bridge brook "
    "bucket butter cabin camel candle canyon castle cedar chair cherry circle cliff cloud comet "
    "copper cottage crane creek crown crystal daisy desert dragon drum eagle ember falcon feather "
    "fern field forest fountain fox garden glacier goose granite harbor hawk hill honey island "
    "jacket kettle ladder lantern lemon lily lion maple marble meadow mirror moon mountain needle "
    "oak ocean orchard otter owl panther pebble pepper pillow pine planet pond quarry rabbit raven "
    "ribbon river robin rocket saddle sail shadow shell spider spring star stone storm tiger tower "
    "trumpet tulip turtle valley velvet violin walnut whale willow window wolf zebra"
).split()
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Haystack:
    """The natural text needles are hidden in: documents joined by blank lines."""

    def __init__(self, documents):
        self.text = "\n\n".join(d.strip() for d in documents if d.strip())
        # Line starts: excerpts begin at one, so they never start inside a word.
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]

    def excerpt(self, rng, chars):
        """`chars` characters (fewer only if the text is shorter) from a random line start."""
        chars = min(chars, len(self.text))
        start = rng.randrange(0, len(self.text) - chars + 1)
        i = bisect.bisect_left(self._line_starts, start)
        if i < len(self._line_starts) and self._line_starts[i] <= len(self.text) - chars:
            start = self._line_starts[i]
        piece = self.text[start : start + chars]
        cut = max(piece.rfind(" ", len(piece) - 40), piece.rfind("\n", len(piece) - 40))
        return piece[:cut] if cut > 0 and start + chars < len(self.text) else piece


def load_corpus(path):
    """The documents of a corpus.txt written by make_corpus.py (separated by form-feed lines);
    a path ending in .gz is read through gzip (a smaller file to carry to another machine)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    return [d for d in text.split(DOC_SEPARATOR) if d.strip()]


def load_haystack(path):
    """A Haystack over corpus.txt (or over several such files, given a list of paths)."""
    paths = [path] if isinstance(path, str) else list(path)
    docs = [d for p in paths for d in load_corpus(p)]
    return Haystack(docs)


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def _number(rng, digits):
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _distinct(rng, count, make):
    seen = []
    while len(seen) < count:
        x = make(rng)
        if x not in seen:
            seen.append(x)
    return seen


def _key(rng):
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _var_name(rng):
    return "".join(rng.choice(LETTERS) for _ in range(5))


def _boundaries(text):
    """Offsets where a needle may go: after a sentence end or a line break (and the ends)."""
    cuts = [0] + [m.end() for m in re.finditer(r"(?<=[.!?])\s|\n", text)] + [len(text)]
    return sorted(set(cuts))


def _insert(rng, text, needles):
    """Inserts the needles in order at random distinct boundaries (spread over the whole text)."""
    cuts = _boundaries(text)
    if len(cuts) >= len(needles):
        positions = sorted(rng.sample(cuts, len(needles)))
    else:  # a tiny haystack: needles may share a place
        positions = sorted(rng.choices(cuts, k=len(needles)))
    out, last = [], 0
    for pos, needle in zip(positions, needles):
        out.append(text[last:pos])
        # At a line start the needle gets its own line; after a sentence it is the next sentence.
        before = "" if pos == 0 or text[pos - 1] in " \n" else " "
        after = "\n" if pos == 0 or text[pos - 1] == "\n" else " "
        out.append(f"{before}{needle}{after}")
        last = pos
    out.append(text[last:])
    return "".join(out)


def _fit(rng, haystack, length, count_tokens, build):
    """Sizes the haystack so that build(hay) has about `length` tokens (see the module doc).

    build(hay_text) -> prompt. Every try starts from the same rng state and excerpt offset, so
    the case depends only on the seed (and the final haystack size).
    """
    count = count_tokens or (lambda s: len(s) / CHARS_PER_TOKEN)
    hay_seed = rng.random()  # the excerpt's offset, the same in every try
    state = rng.getstate()

    def attempt(n):
        rng.setstate(state)
        return build(haystack.excerpt(random.Random(hay_seed), n))

    fixed = count(attempt(0))  # the prompt without haystack
    chars = max(0, int((length - fixed) * CHARS_PER_TOKEN))
    prompt = attempt(chars)
    if count_tokens is None:
        return prompt
    for _ in range(4):
        tokens = count_tokens(prompt)
        if tokens <= length and tokens >= length - max(2, length // 100):
            return prompt
        # Scale the haystack part by its measured density.
        hay_tokens = max(1.0, tokens - fixed)
        chars = max(0, int(chars * (length - fixed) / hay_tokens) - (2 if tokens > length else 0))
        prompt = attempt(chars)
    while count_tokens(prompt) > length and chars > 0:  # rare: trim until it fits
        chars = int(chars * 0.98) - 1
        prompt = attempt(max(0, chars))
    return prompt


# ------------------------------------------------------------------------------------------------
# The four tasks: generator(rng, haystack, length, count_tokens) -> (prompt, answer, items)
# ------------------------------------------------------------------------------------------------


def passkey(rng, haystack, length, count_tokens=None):
    key = _number(rng, 5)
    intro = (
        "There is an important pass key hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about the pass key.\n\n"
    )
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    question = "\n\nWhat is the pass key? The pass key is"

    def build(hay):
        return intro + _insert(rng, hay, [needle]) + question

    return _fit(rng, haystack, length, count_tokens, build), f" {key}", [key]


def multikey(rng, haystack, length, count_tokens=None, num_keys=4):
    keys = _distinct(rng, num_keys, _key)
    values = _distinct(rng, num_keys, lambda r: _number(r, 6))
    target = rng.randrange(num_keys)
    intro = (
        "Some special magic numbers are hidden within the following text. "
        "Make sure to memorize them. I will quiz you about the numbers afterwards.\n\n"
    )
    needles = [f"The special magic number for {k} is {v}." for k, v in zip(keys, values)]
    question = (
        f"\n\nWhat is the special magic number for {keys[target]}? "
        f"The special magic number for {keys[target]} is"
    )

    def build(hay):
        return intro + _insert(rng, hay, needles) + question

    prompt = _fit(rng, haystack, length, count_tokens, build)
    return prompt, f" {values[target]}", [values[target]]


def multivalue(rng, haystack, length, count_tokens=None, num_values=4):
    key = _key(rng)
    values = _distinct(rng, num_values, lambda r: _number(r, 6))
    intro = (
        "Some special magic numbers are hidden within the following text. "
        "Make sure to memorize them. I will quiz you about the numbers afterwards.\n\n"
    )
    needles = [f"One of the special magic numbers for {key} is {v}." for v in values]
    question = (
        f"\n\nWhat are all the special magic numbers for {key}? "
        f"The special magic numbers for {key} are"
    )

    def build(hay):
        return intro + _insert(rng, hay, needles) + question

    prompt = _fit(rng, haystack, length, count_tokens, build)
    return prompt, " " + ", ".join(values), values


def vartrack(rng, haystack, length, count_tokens=None, hops=4, chains=2):
    names = _distinct(rng, (hops + 1) * chains, _var_name)
    values = _distinct(rng, chains, lambda r: _number(r, 5))
    chain_vars = [names[c * (hops + 1) : (c + 1) * (hops + 1)] for c in range(chains)]
    statements = []  # per chain, in order
    for c in range(chains):
        vs = chain_vars[c]
        chain = [f"VAR {vs[0]} = {values[c]}."]
        chain += [f"VAR {vs[i]} = VAR {vs[i - 1]}." for i in range(1, len(vs))]
        statements.append(chain)
    # Interleave the chains at random, each chain staying in order.
    order = [c for c in range(chains) for _ in range(hops + 1)]
    rng.shuffle(order)
    cursor = [0] * chains
    needles = []
    for c in order:
        needles.append(statements[c][cursor[c]])
        cursor[c] += 1
    intro = (
        "Memorize and track the chain of variable assignments hidden in the following text.\n\n"
    )
    question = (
        f"\n\nQuestion: Which variables are assigned the value {values[0]}? "
        f"Answer: The variables assigned the value {values[0]} are"
    )

    def build(hay):
        return intro + _insert(rng, hay, needles) + question

    prompt = _fit(rng, haystack, length, count_tokens, build)
    return prompt, " " + ", ".join(chain_vars[0]), list(chain_vars[0])


GENERATORS = {"passkey": passkey, "multikey": multikey, "multivalue": multivalue,
              "vartrack": vartrack}


def make_case(task, length, seed, haystack, count_tokens=None):
    """One case of `task` with a prompt of about `length` tokens; see the module doc."""
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    rng = random.Random(f"sals-tasks/{task}/{length}/{seed}")
    prompt, answer, items = GENERATORS[task](rng, haystack, length, count_tokens)
    return {"task": task, "prompt": prompt, "answer": answer, "items": items, "length": length,
            "seed": seed}


def score(case, output_text):
    """Fraction of the case's items present in the first line of the model's continuation."""
    first = output_text.strip().split("\n", 1)[0] if output_text.strip() else ""
    items = case["items"]
    return sum(1 for item in items if re.search(rf"(?<!\w){re.escape(item)}(?!\w)", first)) / len(
        items
    )


if __name__ == "__main__":  # a quick look: python3 tools/train/tasks.py corpus.txt [task] [len]
    import sys

    hay = load_haystack(sys.argv[1])
    names = [sys.argv[2]] if len(sys.argv) > 2 else TASKS
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    for t in names:
        c = make_case(t, n, EVAL_SEED_BASE, hay)
        print(f"--- {t}: {len(c['prompt'])} chars, answer {c['answer']!r}\n{c['prompt']}\n")
