"""Benign instructions with helpful reference answers, and refusal templates, written for svgt.

PyPI ships no Alpaca/Dolly-style general instruction set, and the value module needs safe target
responses for stage 3: helpful answers to benign prompts (so guidance does not teach blanket
refusal) and polite refusals for harmful prompts. Both are authored for svgt; the texts and tables
are package data in ``svgt/data/seed_data/`` (JSONL, one object per line), this module loads them:

* ``HANDWRITTEN``: ~100 everyday instructions across many domains with short, correct answers
  (``benign_handwritten.jsonl``).
* ``generated_examples``: deterministic templates (arithmetic, percentages, unit conversions, word
  manipulations, capitals, number facts, time) whose answers are computed, not typed. Their inputs
  are ``benign_conversions.jsonl``, ``benign_words.jsonl``, ``benign_phrases.jsonl`` and
  ``benign_capitals.jsonl``.
* ``REFUSAL_TEMPLATES`` / ``refusal_for``: ~30 refusals (``refusal_templates.jsonl``), some
  topic-aware (self-harm refusals point to support, cyber refusals offer defensive help ...), each
  offering a safe alternative; the topic comes from ``refusal_topic_keywords.jsonl``. They never
  repeat the harmful request, so they carry no harmful content.

A missing or malformed file raises an error naming the file (and line) at import.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from svgt.core.errors import BadInput

BENIGN_LICENSE = "project-authored"


@dataclass(frozen=True)
class BenignExample:
    prompt: str
    response: str
    category: str


# ---------------------------------------------------------------------------------------------
# the package data files
# ---------------------------------------------------------------------------------------------


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _texts(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_text(v) for v in value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _nonzero(value: Any) -> bool:
    return _number(value) and value != 0


_CHECK_NAMES = {
    _text: "a non-empty string",
    _texts: "a non-empty list of non-empty strings",
    _number: "a finite number",
    _nonzero: "a non-zero number",
}


def _read_jsonl(name: str, fields: dict[str, Callable[[Any], bool]]) -> list[dict[str, Any]]:
    """The objects of ``seed_data/<name>``, each with exactly ``fields`` and values that pass their check."""
    where = f"svgt/data/seed_data/{name}"
    try:
        data = (files("svgt.data") / "seed_data" / name).read_bytes()
    except FileNotFoundError as e:
        raise BadInput(f"{where}: package data file missing (is svgt installed with its data?)") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = data[: e.start].count(b"\n") + 1
        raise BadInput(f"{where}:{at}: not UTF-8 text ({e.reason})") from e
    # split on "\n" only: str.splitlines would also split inside a value holding U+2028 or U+0085
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{where}:{number}: not a JSON object ({e.msg}, column {e.colno})") from e
        if not isinstance(record, dict) or set(record) != set(fields):
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise BadInput(f"{where}:{number}: expected an object with keys {sorted(fields)}, got {got}")
        for key, check in fields.items():
            if not check(record[key]):
                raise BadInput(f"{where}:{number}: {key!r} must be {_CHECK_NAMES[check]}, got {record[key]!r}")
        records.append(record)
    if not records:
        raise BadInput(f"{where}: no records")
    return records


HANDWRITTEN: tuple[BenignExample, ...] = tuple(
    BenignExample(r["prompt"], r["response"], r["category"])
    for r in _read_jsonl("benign_handwritten.jsonl", {"prompt": _text, "response": _text, "category": _text})
)

# ---------------------------------------------------------------------------------------------
# template generators: answers are computed, so they are correct by construction
# ---------------------------------------------------------------------------------------------


def _num(x: float, digits: int = 1) -> str:
    """Round for display and drop a trailing .0 (12.0 -> '12', 3.14159 -> '3.1')."""
    value = round(x, digits)
    return str(int(value)) if float(value).is_integer() else f"{value:.{digits}f}"


def _arithmetic(rng: random.Random) -> BenignExample:
    kind = rng.randrange(7)
    a, b = rng.randint(100, 480), rng.randint(3, 95)  # a > b: no negative apples
    if kind == 0:
        return BenignExample(f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", "benign/arithmetic")
    if kind == 1:
        return BenignExample(f"Add {a} and {b}.", f"{a} plus {b} equals {a + b}.", "benign/arithmetic")
    if kind == 2:
        return BenignExample(f"What is {a} minus {b}?", f"{a} - {b} = {a - b}.", "benign/arithmetic")
    if kind == 3:
        a, b = rng.randint(3, 45), rng.randint(3, 25)
        return BenignExample(f"Calculate {a} times {b}.", f"{a} × {b} = {a * b}.", "benign/arithmetic")
    if kind == 4:
        b, q = rng.randint(2, 15), rng.randint(3, 40)
        return BenignExample(f"What is {b * q} divided by {b}?", f"{b * q} ÷ {b} = {q}.", "benign/arithmetic")
    if kind == 5:
        return BenignExample(
            f"If I have {a} apples and give away {b}, how many are left?",
            f"You have {a - b} apples left ({a} - {b} = {a - b}).",
            "benign/arithmetic",
        )
    n, p = rng.randint(2, 9), rng.randint(4, 60)
    return BenignExample(
        f"A ticket costs {p} dollars. How much do {n} tickets cost?",
        f"{n} tickets cost {n * p} dollars ({n} × {p} = {n * p}).",
        "benign/arithmetic",
    )


def _percentage(rng: random.Random) -> BenignExample:
    p = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 75])
    x = rng.randrange(20, 400, 4)
    part = p * x / 100
    if rng.random() < 0.5:
        return BenignExample(
            f"What is {p}% of {x}?",
            f"{p}% of {x} is {_num(part, 2)} ({x} × {p} / 100).",
            "benign/percentages",
        )
    return BenignExample(
        f"A jacket costs {x} dollars and is {p}% off. What is the sale price?",
        f"The discount is {_num(part, 2)} dollars ({p}% of {x}), so the sale price is {_num(x - part, 2)} dollars.",
        "benign/percentages",
    )


@dataclass(frozen=True)
class _Conversion:
    template: str
    src: str
    dst: str
    add_before: float
    multiply: float
    divide: float
    add_after: float
    rule: str

    def convert(self, value: float) -> float:
        # one formula for every row so the file holds only constants; evaluated in this order it gives
        # the same floats as the per-row lambdas it replaced
        return (value + self.add_before) * self.multiply / self.divide + self.add_after


_CONVERSIONS: tuple[_Conversion, ...] = tuple(
    _Conversion(r["prompt"], r["from"], r["to"], r["add_before"], r["multiply"], r["divide"], r["add_after"], r["rule"])
    for r in _read_jsonl(
        "benign_conversions.jsonl",
        {
            "prompt": _text,
            "from": _text,
            "to": _text,
            "add_before": _number,
            "multiply": _number,
            "divide": _nonzero,
            "add_after": _number,
            "rule": _text,
        },
    )
)


def _conversion(rng: random.Random) -> BenignExample:
    conversion = rng.choice(_CONVERSIONS)
    value = rng.choice([2, 3, 5, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 100])
    if conversion.src == "°F":
        value = rng.choice([32, 41, 50, 59, 68, 77, 86, 95, 104, 212])
    return BenignExample(
        conversion.template.format(v=value),
        f"{value} {conversion.src} is about {_num(conversion.convert(value))} {conversion.dst} ({conversion.rule}).",
        "benign/unit_conversion",
    )


_WORDS: tuple[str, ...] = tuple(r["word"] for r in _read_jsonl("benign_words.jsonl", {"word": _text}))
_PHRASES: tuple[str, ...] = tuple(r["phrase"] for r in _read_jsonl("benign_phrases.jsonl", {"phrase": _text}))


def _word_task(rng: random.Random) -> BenignExample:
    kind = rng.randrange(6)
    word = rng.choice(_WORDS)
    cat = "benign/word_tasks"
    if kind == 0:
        return BenignExample(f"Spell the word '{word}' backwards.", f"'{word}' backwards is '{word[::-1]}'.", cat)
    if kind == 1:
        return BenignExample(
            f"How many letters are in the word '{word}'?", f"The word '{word}' has {len(word)} letters.", cat
        )
    if kind == 2:
        words = rng.sample(_WORDS, 4)
        return BenignExample(
            f"Put these words in alphabetical order: {', '.join(words)}.",
            f"In alphabetical order: {', '.join(sorted(words))}.",
            cat,
        )
    if kind == 3:
        vowels = [c for c in word if c in "aeiou"]
        return BenignExample(
            f"How many vowels are in the word '{word}'?",
            f"'{word}' has {len(vowels)} vowels ({', '.join(vowels)}), counting a, e, i, o and u.",
            cat,
        )
    phrase = rng.choice(_PHRASES)
    if kind == 4:
        return BenignExample(f"Convert '{phrase}' to uppercase.", f"'{phrase.upper()}'", cat)
    return BenignExample(
        f"How many words are in the phrase '{phrase}'?", f"'{phrase}' has {len(phrase.split())} words.", cat
    )


_CAPITALS: dict[str, str] = {
    r["country"]: r["capital"] for r in _read_jsonl("benign_capitals.jsonl", {"country": _text, "capital": _text})
}


def _capital(rng: random.Random) -> BenignExample:
    country = rng.choice(sorted(_CAPITALS))
    capital = _CAPITALS[country]
    template = rng.choice(
        ("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}.")
    )
    return BenignExample(template.format(c=country), f"The capital of {country} is {capital}.", "benign/geography")


def _roman(n: int) -> str:
    table = (
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    )
    out = []
    for value, letters in table:
        count, n = divmod(n, value)
        out.append(letters * count)
    return "".join(out)


def _smallest_divisor(n: int) -> int:
    return next((d for d in range(2, int(n**0.5) + 1) if n % d == 0), n)


def _number_fact(rng: random.Random) -> BenignExample:
    kind = rng.randrange(6)
    cat = "benign/numbers"
    if kind == 0:
        n = rng.randint(11, 199)
        d = _smallest_divisor(n)
        answer = (
            f"Yes, {n} is prime: its only divisors are 1 and {n}."
            if d == n
            else f"No, {n} is not prime: it is divisible by {d} ({n} = {d} × {n // d})."
        )
        return BenignExample(f"Is {n} a prime number?", answer, cat)
    if kind == 1:
        n = rng.randint(5, 255)
        return BenignExample(f"Convert {n} to binary.", f"{n} in binary is {n:b}.", cat)
    if kind == 2:
        n = rng.randint(4, 2024)
        return BenignExample(f"Write {n} in Roman numerals.", f"{n} in Roman numerals is {_roman(n)}.", cat)
    if kind == 3:
        nums = rng.sample(range(1, 100), 5)
        return BenignExample(
            f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
            f"From smallest to largest: {', '.join(map(str, sorted(nums)))}.",
            cat,
        )
    if kind == 4:
        n = rng.randint(4, 30)
        return BenignExample(
            f"What is the square root of {n * n}?",
            f"The square root of {n * n} is {n}, because {n} × {n} = {n * n}.",
            cat,
        )
    n = rng.randint(10, 999)
    return BenignExample(
        f"Is {n} even or odd?", f"{n} is {'even' if n % 2 == 0 else 'odd'}: its last digit is {n % 10}.", cat
    )


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _time_task(rng: random.Random) -> BenignExample:
    kind = rng.randrange(4)
    cat = "benign/time"
    if kind == 0:
        h = rng.randint(2, 12)
        return BenignExample(f"How many minutes are in {h} hours?", f"{h} hours is {h * 60} minutes ({h} × 60).", cat)
    if kind == 1:
        w = rng.randint(2, 12)
        return BenignExample(f"How many days are in {w} weeks?", f"{w} weeks is {w * 7} days ({w} × 7).", cat)
    if kind == 2:
        start, k = rng.randrange(7), rng.randint(2, 20)
        end = _DAYS[(start + k) % 7]
        return BenignExample(
            f"What day of the week is {k} days after a {_DAYS[start]}?",
            f"{k} days after a {_DAYS[start]} is a {end}.",
            cat,
        )
    h, m = rng.randint(8, 17), rng.choice([20, 30, 45, 50, 75, 90, 105])
    end_h, end_m = divmod(h * 60 + m, 60)
    return BenignExample(
        f"A meeting starts at {h}:00 and lasts {m} minutes. When does it end?",
        f"It ends at {end_h}:{end_m:02d}.",
        cat,
    )


_GENERATORS: tuple[tuple[Callable[[random.Random], BenignExample], int], ...] = (
    (_arithmetic, 40),
    (_percentage, 15),
    (_conversion, 30),
    (_word_task, 35),
    (_capital, 30),
    (_number_fact, 30),
    (_time_task, 20),
)


def generated_examples(seed: int) -> list[BenignExample]:
    """~200 template examples, reproducible for a given seed, with unique prompts."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[BenignExample] = []
    for generate, count in _GENERATORS:
        made, attempts = 0, 0
        while made < count and attempts < count * 20:
            attempts += 1
            example = generate(rng)
            if example.prompt.lower() not in seen:
                seen.add(example.prompt.lower())
                out.append(example)
                made += 1
    return out


def benign_examples(seed: int) -> list[BenignExample]:
    """The hand-written set followed by the generated one."""
    return list(HANDWRITTEN) + generated_examples(seed)


# ---------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------


def _refusal_templates() -> dict[str, tuple[str, ...]]:
    pools: dict[str, list[str]] = {}
    for r in _read_jsonl("refusal_templates.jsonl", {"topic": _text, "text": _text}):
        pools.setdefault(r["topic"], []).append(r["text"])
    if "general" not in pools:
        raise BadInput("svgt/data/seed_data/refusal_templates.jsonl: no 'general' templates (the fallback pool)")
    return {topic: tuple(texts) for topic, texts in pools.items()}


REFUSAL_TEMPLATES: dict[str, tuple[str, ...]] = _refusal_templates()


def _topic_keywords() -> tuple[tuple[str, tuple[str, ...]], ...]:
    name = "refusal_topic_keywords.jsonl"
    rows = _read_jsonl(name, {"topic": _text, "keywords": _texts})
    for number, r in enumerate(rows, start=1):
        if r["topic"] not in REFUSAL_TEMPLATES:  # refusal_for would fail on the first prompt of this topic
            raise BadInput(f"svgt/data/seed_data/{name}:{number}: topic {r['topic']!r} has no refusal templates")
    return tuple((r["topic"], tuple(r["keywords"])) for r in rows)


# checked in order: the first topic with a matching keyword (in category, then prompt) wins
_TOPIC_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = _topic_keywords()


def refusal_topic(category: str, prompt: str) -> str:
    """Pick the refusal topic from the row's category, falling back to keywords in the prompt."""
    for text in (category.lower(), prompt.lower()):
        for topic, keywords in _TOPIC_KEYWORDS:
            if any(k in text for k in keywords):
                return topic
    return "general"


def refusal_for(prompt: str, category: str, seed: int) -> str:
    """A refusal for a harmful prompt, chosen deterministically from (seed, prompt).

    Self-harm prompts always get a supportive refusal; other topics get their topic-aware template
    about 60% of the time and a general one otherwise, so the set stays varied.
    """
    digest = int(hashlib.sha256(f"{seed}\x1f{prompt}".encode()).hexdigest(), 16)
    topic = refusal_topic(category, prompt)
    general = REFUSAL_TEMPLATES["general"]
    if topic == "general" or (topic != "self_harm" and digest % 10 >= 6):
        return general[(digest // 10) % len(general)]
    pool = REFUSAL_TEMPLATES[topic]
    return pool[(digest // 10) % len(pool)]


def refusal_count() -> int:
    return sum(len(v) for v in REFUSAL_TEMPLATES.values())
