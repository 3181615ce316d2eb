"""Precision guard for semantic cache hits: may two similar texts share one answer?

A semantic cache serves a stored answer when the embedding of a new user text is
close enough to a stored one. Sentence embeddings are nearly blind to the words
that decide an answer: ``"convert a string to an integer"`` and ``"... an integer
to a string"`` have a cosine of 0.997. So a hit needs two things: a cosine of at
least :data:`DEFAULT_THRESHOLD` *and* :func:`compatible` on the two texts.

The guard is a cheap lexical check (stdlib only, tens of microseconds per pair,
no model). It errs on the side of *no*: a missed hit costs one model call, a
wrong hit serves a wrong answer. Rules, in order (``mismatch`` names the first
that fails):

1. **Normalise.** Unicode NFKC, lowercase, contractions expanded (``what's`` →
   ``what is``, ``doesn't``/``doesnt`` → ``does not``), number words and digits
   to one form (``three`` = ``3``, ``$250k`` = ``250000 dollar``, ``15%`` =
   ``15 percent``, ``180°C`` = ``180 degree celsius``, ``2^10`` = ``2 to the
   power of 10``, Roman numerals ``II``..``XXXIX`` written in capitals, ``5 pm``
   = ``5 p.m.``), a short table of general abbreviations (units such as
   ``km``/``tbsp``/``lbs``, ISO currency codes, ``int``, ``lcm``, ``daily`` =
   ``per day``, ``more than`` = ``over`` ...), irregular plurals, and a light
   Porter stem (plural, ``-ed``, ``-ing``, ``-ly``, final ``e``; comparatives
   are kept), so inflection does not matter. Words inside double quotes are
   literal: all of them count.
2. **Drop what does not change an answer:** articles, pronouns, auxiliaries and
   modal verbs, plain prepositions and conjunctions, and question framing
   (``how``, ``what``, ``which``, ``please``, ``tell me``, ``explain``, ``give``,
   ``suggest``, ``calculate``, ``convert`` ...). A word written in capitals or
   capitalised in the middle of a sentence (``US``, ``May``) is a name and never
   dropped, unless the whole text is in Title Case or capitals.
3. **Critical words are ordinary content**, never dropped: numbers (as a
   multiset), negations (``not``, ``no``, ``never``, ``without``, ``n't`` → one
   token ``not``; ``except``), the wh-words that fix the kind of answer
   (``who``, ``when``, ``where``, ``why``), comparison and order words
   (``than``, ``before``, ``after``, ``instead``, ``over``, ``under``, ``more``,
   ``less``, ``most``, ``least`` ...), particles (``off`` as in *turn off*,
   ``up``, ``down``, ``out``) and arithmetic operators.
4. **Same content:** the two sets of remaining words must be equal, except that
   a word may match a misspelling of itself (edit distance 1, both at least 6
   letters, same first letter) or two adjacent words written together
   (``semicolon`` / ``semi-colon``). No other difference is forgiven: an extra
   word is a narrower or wider question (``... on weekends``). Two texts with no
   content words left must be the same words.
5. **Same direction:** for each relation word that both texts use (``to``,
   ``from``, ``into``, ``than``, ``of``, ``in``, ``for``, ``by``, ``instead``,
   ``before``, ``after`` ...), the word each use points at (the next content
   word in its clause) must lie in the phrase of some use of the same relation
   in the other text (the content words up to the next relation or clause
   break). This catches swaps (``string to integer`` / ``integer to string``,
   ``faster than Java`` / ``faster than Python``) while letting clauses move
   (``from X to Y`` / ``to Y from X``). A relation that opens a clause relates
   nothing, nor does ``to`` after a stop word (the infinitive in ``how to``).
6. **Same measures:** a number present in both texts must be followed by the
   same unit when both name one (``10 miles`` / ``10 kilometers``), which
   catches swaps that have no relation word (``how many miles is 10 km``).

Known limits, by design: synonyms (``fast``/``quick``, ``fridge``/
``refrigerator``), rephrasings with other words and inverted comparisons with
antonyms are rejected, which costs recall and never precision. Word order is
only checked around relation words and numbers (``does A beat B`` / ``does B
beat A`` passes). Plurality, ``all``/``every``, pronouns and tense are not
distinguished; the typo rule can pair two real words one letter apart
(``desert``/``dessert``) when the embeddings are also close.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

from strata.cache.guard_vocab import (
    _ABBREV,
    _CONTRACTIONS,
    _NEGATION,
    _ORDINALS,
    _RELATION,
    _ROMAN,
    _ROMAN_VALUE,
    _SCALES,
    _STOP,
    _UNITS,
    _wordset,
)
from strata.cache.stem import stem

__all__ = [
    "DEFAULT_THRESHOLD",
    "Analysis",
    "analyse",
    "clear_caches",
    "compatible",
    "mismatch",
    "stem",
]

#: Cosine similarity (all-MiniLM-L6-v2) a semantic hit needs besides
#: :func:`compatible`. Chosen on ``bench/cache/pairs.jsonl`` as the README there
#: says: the lowest threshold at which hits that also pass the guard are at
#: least 99% precise (``strata cache eval``), rounded down to two decimals
#: without gaining or losing a hit. Below it no labelled pair passes the guard.
DEFAULT_THRESHOLD = 0.60

# --- text to tokens ----------------------------------------------------------------

_QUOTE = re.compile(r'"([^"]*)"')
_PRE: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"(?<=\d),(?=\d{3}\b)"), ""),  # 10,000 -> 10000
    (re.compile(r"(\d+(?:\.\d+)?)\s*[kK]\b"), lambda m: _num(float(m.group(1)) * 1000)),
    (re.compile(r"\s*\^\s*"), " to the power of "),
    (re.compile(r"°\s*([CF])\b"), r" degree \1"),
    (re.compile(r"°"), " degree "),
    (re.compile(r"%|\bper\s+cent\b", re.I), " percent "),
    (re.compile(r"\$\s*(\d+(?:\.\d+)?)"), r"\1 dollar "),
    (re.compile(r"€\s*(\d+(?:\.\d+)?)"), r"\1 euro "),
    (re.compile(r"£\s*(\d+(?:\.\d+)?)"), r"\1 british pound "),
    (re.compile(r"\bw/o\b", re.I), " without "),
    (re.compile(r"\bw/(?=\s)", re.I), " with "),
    (re.compile(r"(?<=\d)\s*/\s*(?=\d)"), " divided by "),
    (re.compile(r"(?<=\w)\s+-\s+(?=[\d(])"), " minus "),
    (re.compile(r"&"), " and "),
    (re.compile(r"(?<=\d)\s*[aA]\.?[mM]\b\.?"), " antemeridiem "),  # 5 am, 5 a.m.
    (re.compile(r"(?<=\d)\s*[pP]\.?[mM]\b\.?"), " postmeridiem "),
    (re.compile(r"\b(?:more|greater)\s+than\b", re.I), " over "),
    (re.compile(r"\b(?:less|fewer)\s+than\b", re.I), " under "),
    (re.compile(r"[/_]"), " "),
]
_TOKEN = re.compile(
    r"\d+(?:\.\d+)?(?:st|nd|rd|th)\b"  # ordinal
    r"|\d+s\b"  # decade
    r"|\d+(?:\.\d+)?"  # number
    r"|[^\W\d_]+(?:'[^\W\d_]+)*"  # word, with contraction
    r"|[.,;:!?]"  # clause break
    r"|[+=*\u00d7<>]"  # operator
)
_OPERATORS = {
    "+": "plus",
    "*": "times",
    "\u00d7": "times",
    "=": "equals",
    "<": "less",
    ">": "greater",
}
_BREAK = "|"


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _roman(word: str) -> int:
    total = 0
    for i, ch in enumerate(word):
        v = _ROMAN_VALUE[ch]
        nxt = _ROMAN_VALUE[word[i + 1]] if i + 1 < len(word) else 0
        total += -v if v < nxt else v
    return total


@dataclass(frozen=True, slots=True)
class _Tok:
    text: str  # lowercase
    name: bool  # written as a name: capitals, or capitalised mid-sentence
    literal: bool  # inside double quotes


def _raw_tokens(text: str) -> list[_Tok]:
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("\u201c", '"').replace("\u201d", '"')
    out: list[_Tok] = []
    pos = 0
    for m in _QUOTE.finditer(text):
        out += _segment(text[pos : m.start()], literal=False, start=not out)
        out += _segment(m.group(1), literal=True, start=False)
        pos = m.end()
    out += _segment(text[pos:], literal=False, start=not out)
    # In Title Case or ALL CAPS text capitals mark no names.
    if sum(t.name for t in out) * 2 > sum(t.text.isalpha() for t in out):
        out = [_Tok(t.text, False, t.literal) for t in out]
    return out


def _segment(text: str, *, literal: bool, start: bool) -> list[_Tok]:
    for pattern, repl in _PRE:
        text = pattern.sub(repl, text)
    out: list[_Tok] = []
    sentence_start = start
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok in ".!?;:,":
            out.append(_Tok(_BREAK, False, literal))
            sentence_start = tok in ".!?"
            continue
        if tok in _OPERATORS:
            out.append(_Tok(_OPERATORS[tok], False, True))
            sentence_start = False
            continue
        lower = tok.lower()
        caps = len(tok) > 1 and tok.isupper() and tok.isalpha()
        name = caps or (tok[0].isupper() and not sentence_start and tok != "I")
        sentence_start = False
        if caps and _ROMAN.match(tok):
            out.append(_Tok(str(_roman(tok)), False, literal))
            continue
        if m.group()[0].isdigit():
            if lower[-2:] in ("st", "nd", "rd", "th"):
                n = lower[:-2]
                out.append(_Tok(_ORDINALS.get(n, n + "th"), False, literal))
            elif lower.endswith("s"):
                out.append(_Tok(lower, False, literal))
            else:
                out.append(_Tok(_num(float(lower)), False, literal))
            continue
        for word in _expand(lower):
            out.append(_Tok(word, name, literal))
    return out


def _expand(word: str) -> list[str]:
    """Contractions and abbreviations to their words (lowercase)."""
    if word in _CONTRACTIONS:
        return _CONTRACTIONS[word].split()
    if "'" in word:
        base, _, suffix = word.partition("'")
        if suffix == "t" and base.endswith("n"):  # doesn't -> does not
            return [base[:-1], "not"]
        return [base]  # 's 're 've 'll 'd 'm: possessive or auxiliary
    if word in _ABBREV:
        return _ABBREV[word].split()
    return [word]


def _numbers(toks: list[_Tok]) -> list[_Tok]:
    """Runs of number words (and digits followed by scale words) become one number."""
    out: list[_Tok] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        is_digit = t.text.replace(".", "", 1).isdigit()
        if t.literal or not (t.text in _UNITS or t.text in _SCALES or is_digit):
            out.append(t)
            i += 1
            continue
        total, current, j, after_tens = 0.0, 0.0, i, False
        while j < len(toks) and not toks[j].literal:
            w = toks[j].text
            if j == i and is_digit:
                current = float(w)
            elif w in _UNITS and not is_digit and (current % 100 == 0 or after_tens):
                if after_tens and _UNITS[w] >= 10:
                    break  # "twenty thirty": two numbers
                current += _UNITS[w]
                after_tens = _UNITS[w] >= 20 and not after_tens
                j += 1
                continue
            elif w in _SCALES:  # "five hundred", "2 million", "a thousand"
                after_tens = False
                if _SCALES[w] == 100:
                    current = max(current, 1) * 100
                else:
                    total += max(current, 1) * _SCALES[w]
                    current = 0
            elif w == "and" and j > i and j + 1 < len(toks) and toks[j + 1].text in _UNITS:
                pass  # "one hundred and five"
            else:
                break
            j += 1
        if j == i + 1 and t.text == "one":
            out.append(_Tok("one", False, False))  # "one" alone is "a": a stop word
        else:
            out.append(_Tok(_num(total + current), False, False))
        i = j
    return out


# --- analysis ----------------------------------------------------------------------

# Measure words: a number followed by one of these is a quantity (rule 6).
_UNIT_WORDS = frozenset(
    stem(w)
    for w in _wordset(
        """
    kilometer meter centimeter millimeter mile foot inch yard kilogram gram milligram
    pound ounce ton liter milliliter gallon quart pint cup tablespoon teaspoon
    celsius fahrenheit kelvin degree percent dollar euro yen yuan rupee franc peso
    british japanese chinese indian canadian australian swiss mexican
    second minute hour day week month year decade century time
    byte kilobyte megabyte gigabyte terabyte
    """
    )
)


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the guard compares: content words, numbers and relation objects."""

    words: frozenset[str]  # stems of content words, numbers included
    numbers: tuple[tuple[str, int], ...]  # multiset of numbers, sorted
    # relation -> one (first word, phrase) per use: the content words it points at
    relations: tuple[tuple[str, tuple[tuple[str, frozenset[str]], ...]], ...]
    units: tuple[tuple[str, frozenset[str]], ...]  # number -> measure words after it
    sequence: tuple[str, ...]  # every token (stems, stop words included), for compounds


def _is_number(w: str) -> bool:
    return w.replace(".", "", 1).isdigit()


@lru_cache(maxsize=4096)
def analyse(text: str) -> Analysis:
    """The normalised content of ``text`` (cached: the same texts recur)."""
    toks = _numbers(_raw_tokens(text))
    # kind: "w" content word, "r" relation, "s" stop, "b" clause break
    items: list[tuple[str, str]] = []
    for t in toks:
        w = t.text
        if w == _BREAK:
            items.append(("b", w))
        elif t.literal or t.name or _is_number(w):
            items.append(("w", stem(w)))
        elif w in _NEGATION:
            items.append(("w", "not"))
        elif w in _RELATION:
            items.append(("r", _RELATION[w]))
        elif w in _STOP:
            items.append(("s", w))
        else:
            items.append(("w", stem(w)))
    words: set[str] = set()
    numbers: Counter[str] = Counter()
    relations: dict[str, list[tuple[str, frozenset[str]]]] = {}
    units: dict[str, set[str]] = {}
    for i, (kind, w) in enumerate(items):
        if kind == "w":
            words.add(w)
            if _is_number(w):
                numbers[w] += 1
                nxt = items[i + 1][1] if i + 1 < len(items) and items[i + 1][0] == "w" else ""
                units.setdefault(w, set()).add(nxt if nxt in _UNIT_WORDS else "")
        elif kind == "r":
            if w not in _PLAIN_RELATIONS:
                words.add(w)  # comparison and order words must be in both texts
            # A relation links what comes before it in its clause to the phrase
            # after it. "to" after a stop word ("how to", "need to") marks an
            # infinitive: no relation.
            prev = items[i - 1][0] if i > 0 else "b"
            if prev != "b" and (w != "to" or prev == "w"):
                relations.setdefault(w, []).append(_phrase(items, i))
    return Analysis(
        words=frozenset(words),
        numbers=tuple(sorted(numbers.items())),
        relations=tuple(sorted((k, tuple(v)) for k, v in relations.items())),
        units=tuple(sorted((k, frozenset(v)) for k, v in units.items())),
        sequence=tuple(w for kind, w in items if kind != "b"),
    )


# Relations that are only compared by what they point at, not required in both.
_PLAIN_RELATIONS = frozenset(("to", "from", "of", "in", "for", "by", "per", "toward"))


def _phrase(items: list[tuple[str, str]], i: int) -> tuple[str, frozenset[str]]:
    """What the relation at ``i`` points at: the first content word after it and
    the content words up to the next relation or clause break (("", {}) if none)."""
    phrase: list[str] = []
    for kind, w in items[i + 1 :]:
        if kind == "b" or (kind == "r" and phrase):
            break
        if kind == "w":
            phrase.append(w)
    return (phrase[0] if phrase else "", frozenset(phrase))


# --- comparison ----------------------------------------------------------------------

_TYPO_MIN_LEN = 6


def _one_edit(a: str, b: str) -> bool:
    """Damerau-Levenshtein distance of exactly 1 (one insertion, deletion,
    substitution or swap of neighbours)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    if a[i + 1 :] == b[i + 1 :]:
        return True
    return i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]


def _typo(a: str, b: str) -> bool:
    return (
        min(len(a), len(b)) >= _TYPO_MIN_LEN
        and a.isalpha()
        and b.isalpha()
        and a[0] == b[0]
        and _one_edit(a, b)
    )


def _pair_words(x: Analysis, y: Analysis) -> dict[str, str] | None:
    """Match ``y``'s content words onto ``x``'s; a map y-word -> x-word for the
    inexact matches, or None when some word is left over on either side."""
    only_x = set(x.words - y.words)
    only_y = set(y.words - x.words)
    renamed: dict[str, str] = {}
    # Compounds: "semicolon" in one text, "semi colon" in the other.
    for side, other, seq in ((only_x, only_y, y.sequence), (only_y, only_x, x.sequence)):
        for w in sorted(side):
            for p, q in pairwise(seq):
                if p + q == w or stem(p + q) == w:
                    side.discard(w)
                    other.discard(p)
                    other.discard(q)
                    break
    # Misspellings: pair each leftover word with one a single edit away.
    for w in sorted(only_y):
        match = next((v for v in sorted(only_x) if _typo(v, w)), None)
        if match is not None:
            only_x.discard(match)
            only_y.discard(w)
            renamed[w] = match
    if only_x or only_y:
        return None
    return renamed


def mismatch(a: str, b: str) -> str | None:
    """Why ``a`` and ``b`` may not share an answer, or None when they may."""
    x, y = analyse(a), analyse(b)
    if not x.words or not y.words:  # nothing to compare: only the same words will do
        return None if x.sequence == y.sequence else "no content words to compare"
    renamed = _pair_words(x, y)
    if renamed is None:
        only_a = sorted(x.words - y.words)
        only_b = sorted(y.words - x.words)
        return f"content differs: {only_a} / {only_b}"
    if x.numbers != y.numbers:
        return f"numbers differ: {dict(x.numbers)} / {dict(y.numbers)}"

    def rename(objects: frozenset[str]) -> frozenset[str]:
        return frozenset(renamed.get(o, o) for o in objects)

    rel_x, rel_y = dict(x.relations), dict(y.relations)
    for rel in sorted(rel_x.keys() & rel_y.keys()):
        uses_x = rel_x[rel]
        uses_y = [(renamed.get(f, f), rename(p)) for f, p in rel_y[rel]]
        for uses, other in ((uses_x, uses_y), (uses_y, uses_x)):
            for first, _ in uses:
                if not any(first in phrase for _, phrase in other):
                    return f"'{rel}' points at {first!r} in one text only"
    units_x, units_y = dict(x.units), dict(y.units)
    for num in sorted(units_x.keys() & units_y.keys()):
        ux, uy = units_x[num] - {""}, rename(units_y[num]) - {""}
        if ux and uy and ux != uy:
            return f"{num} measures {sorted(ux)} / {sorted(uy)}"
    return None


def clear_caches() -> None:
    """Forget analysed texts and stems (for cold timings)."""
    analyse.cache_clear()
    stem.cache_clear()


def compatible(a: str, b: str) -> bool:
    """True when two embedding-similar user texts may share one cached answer."""
    return mismatch(a, b) is None
