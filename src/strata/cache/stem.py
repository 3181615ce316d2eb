"""A light English stemmer for the guard (see strata.cache.guard): Porter's steps
1 and 5 and Snowball's -ly, so inflection does not make two questions differ."""

from __future__ import annotations

from functools import lru_cache

# --- stemming (Porter's steps 1 and 5, and Snowball's -ly) ---------------------------


def _cons(w: str, i: int) -> bool:
    c = w[i]
    if c in "aeiou":
        return False
    if c == "y":
        return i == 0 or not _cons(w, i - 1)
    return True


def _measure(w: str) -> int:
    m, i, n = 0, 0, len(w)
    while i < n and _cons(w, i):
        i += 1
    while i < n:
        while i < n and not _cons(w, i):
            i += 1
        if i >= n:
            break
        while i < n and _cons(w, i):
            i += 1
        m += 1
    return m


def _has_vowel(w: str) -> bool:
    return any(not _cons(w, i) for i in range(len(w)))


def _cvc(w: str) -> bool:
    return (
        len(w) >= 3
        and _cons(w, len(w) - 3)
        and not _cons(w, len(w) - 2)
        and _cons(w, len(w) - 1)
        and w[-1] not in "wxy"
    )


@lru_cache(maxsize=8192)
def stem(w: str) -> str:
    """A light Porter stem: inflection (-s, -ed, -ing, -ly, final e) only."""
    if len(w) <= 3 or not w.isalpha():
        return w
    # 1a: plurals
    if w.endswith(("sses", "ies")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    # 1b: -ed, -ing
    if w.endswith("eed"):
        if _measure(w[:-3]) > 0:
            w = w[:-1]
    else:
        for suffix in ("ed", "ing"):
            base = w[: -len(suffix)]
            if w.endswith(suffix) and _has_vowel(base):
                w = base
                if w.endswith(("at", "bl", "iz")):
                    w += "e"
                elif len(w) > 1 and w[-1] == w[-2] and _cons(w, len(w) - 1) and w[-1] not in "lsz":
                    w = w[:-1]
                elif _measure(w) == 1 and _cvc(w):
                    w += "e"
                break
    # 1c: y -> i; -ly
    if w.endswith("y") and _has_vowel(w[:-1]):
        w = w[:-1] + "i"
    if w.endswith("li") and len(w) >= 6 and (w[-3] in "cdeghkmnrt" or w.endswith("alli")):
        w = w[:-2]
    # 5: final e, double l
    if w.endswith("e"):
        m = _measure(w[:-1])
        if m > 1 or (m == 1 and not _cvc(w[:-1])):
            w = w[:-1]
    if w.endswith("ll") and _measure(w) > 1:
        w = w[:-1]
    return w
