"""The semantic cache's precision guard: each rule, on examples written for these tests."""

from __future__ import annotations

import time

import pytest

from strata.cache import guard
from strata.cache.guard import analyse, compatible, mismatch, stem

# --- pairs that must NOT share an answer, by the rule that must catch them ---------

REJECT = {
    "direction swap (to)": (
        "How do I convert JSON to YAML?",
        "How do I convert YAML to JSON?",
    ),
    "direction swap (from/to)": (
        "What's the cheapest way to fly from Paris to Rome?",
        "What's the cheapest way to fly from Rome to Paris?",
    ),
    "inverted comparison": ("Is Go simpler than Rust?", "Is Rust simpler than Go?"),
    "instead of swapped": (
        "Can I use honey instead of sugar in tea?",
        "Can I use sugar instead of honey in tea?",
    ),
    "operands swapped": ("What is 3 to the power of 4?", "What is 4 to the power of 3?"),
    "percent of swapped": ("What is 20% of 50?", "What is 50% of 20?"),
    "units swapped without a relation word": (
        "How many ounces is 8 cups?",
        "How many cups is 8 ounces?",
    ),
    "units swapped around a copula": (
        "How many inches are in a foot?",
        "How many feet are in an inch?",
    ),
    "negation": ("Which plants need direct sunlight?", "Which plants do not need direct sunlight?"),
    "negation (n't)": ("Why does my laptop charge slowly?", "Why doesn't my laptop charge slowly?"),
    "negation (typed without apostrophe)": ("Why does my tap drip?", "why doesnt my tap drip"),
    "negation (without)": ("How do I bake bread with yeast?", "How do I bake bread without yeast?"),
    "another number": ("Plan a 5 day trip to Lisbon.", "Plan a 4 day trip to Lisbon."),
    "another number (words)": ("Give me five tips for running.", "Give me 6 tips for running."),
    "another number count": ("What is the sum of 3, 3 and 4?", "What is the sum of 3, 4 and 4?"),
    "another entity": ("What is the capital of Peru?", "What is the capital of Chile?"),
    "narrower scope": ("What can I do in Oslo?", "What can I do in Oslo with kids?"),
    "another question word": (
        "When was the Eiffel Tower built?",
        "Why was the Eiffel Tower built?",
    ),
    "particle": ("How do I turn on dark mode?", "How do I turn off dark mode?"),
    "more / less": (
        "Which fruits have more vitamin C than oranges?",
        "Which fruits have less vitamin C than oranges?",
    ),
    "before / after": ("Should I stretch before running?", "Should I stretch after running?"),
    "a name is never a stop word": ("Is the US embassy open today?", "Is the embassy open today?"),
    "another format": ("List the planets as JSON.", "List the planets as a table."),
    "morning / evening": ("Set an alarm for 6 am.", "Set an alarm for 6 pm."),
    "Roman numerals": ("Who was Henry VIII?", "Who was Henry VII?"),
    "quoted text is literal": ('What does "to be or not to be" mean?', 'What does "to be" mean?'),
    "no content words, different words": ("What?", "How?"),
}

# --- pairs that MAY share an answer: what normalisation forgives ------------------

ACCEPT = {
    "contraction": ("What's the boiling point of milk?", "What is the boiling point of milk?"),
    "contraction without apostrophe": (
        "Whats the boiling point of milk",
        "What is the boiling point of milk?",
    ),
    "number word / digit": ("Give me five tips for running.", "Give me 5 tips for running"),
    "compound number words": ("Is twenty-five a square?", "Is 25 a square?"),
    "number words with scale": ("Is one hundred and five prime?", "Is 105 prime?"),
    "thousands separator, k and currency": (
        "Is $1,500 enough for a week in Lisbon?",
        "Is 1.5k dollars enough for a week in Lisbon?",
    ),
    "percent sign": ("What is 20% of 50?", "Calculate 20 percent of 50."),
    "unit abbreviations": (
        "How many tsp are in a tbsp?",
        "How many teaspoons are in a tablespoon?",
    ),
    "degree sign and framing verb": (
        "Convert 100°F to Celsius.",
        "What is 100 degrees Fahrenheit in Celsius?",
    ),
    "inflection": ("How do I rename files in Linux?", "How can I rename a file in Linux?"),
    "clause moved": (
        "In Python, how do I merge two dictionaries?",
        "How do I merge two dictionaries in Python?",
    ),
    "relations reordered": (
        "What is the train time to Lyon from Paris?",
        "What is the train time from Paris to Lyon?",
    ),
    "question framing": ("Please explain how a rainbow forms.", "How does a rainbow form?"),
    "typo (swapped letters)": (
        "How do I improve my vocabulary?",
        "how do i improve my vocabluary",
    ),
    "words written together": ("Is a hot-dog a sandwich?", "Is a hotdog a sandwich?"),
    "all capitals": ("HOW DO I BOIL RICE?", "how do I boil rice"),
    "Roman / Arabic numerals": ("When did World War II start?", "When did World War 2 start?"),
    "more than / over": (
        "Which countries have over 100 million people?",
        "Which countries have more than one hundred million people?",
    ),
    "daily / per day": (
        "How many steps should I walk daily?",
        "How many steps should I walk per day?",
    ),
    "clock time notation": ("Set an alarm for 6pm.", "Set an alarm for 6 p.m."),
    "infinitive to is no relation": (
        "How to convert JSON to YAML?",
        "How do I convert JSON to YAML?",
    ),
    "a relation opening a sentence has nothing to relate": (
        "For 2024, what is the deduction for a single filer?",
        "What is the deduction for a single filer in 2024?",
    ),
    "negation words are one": (
        "Can I make cookies with no sugar?",
        "Can I make cookies without sugar?",
    ),
    "identical": ("Tell me a joke.", "Tell me a joke."),
}


@pytest.mark.parametrize("a, b", REJECT.values(), ids=REJECT.keys())
def test_rejects(a: str, b: str) -> None:
    assert not compatible(a, b)
    assert not compatible(b, a)
    assert mismatch(a, b)


@pytest.mark.parametrize("a, b", ACCEPT.values(), ids=ACCEPT.keys())
def test_accepts(a: str, b: str) -> None:
    assert mismatch(a, b) is None
    assert compatible(b, a)


def test_mismatch_names_the_rule() -> None:
    assert "content differs" in (mismatch("Is tea bad for you?", "Is tea good for you?") or "")
    assert "'to' points at" in (mismatch("Map A to B.", "Map B to A.") or "")
    assert "'than' points at" in (
        mismatch("Is Go faster than Java?", "Is Java faster than Go?") or ""
    )
    assert "measures" in (mismatch("How many km is 10 miles?", "How many miles is 10 km?") or "")
    assert "numbers differ" in (mismatch("Average of 2, 2, 7", "average of 2, 7, 7") or "")


def test_synonyms_are_not_forgiven() -> None:
    # By design: a synonym costs a cache hit, never a wrong answer.
    assert not compatible("Is running good for my knees?", "Is jogging good for my knees?")


def test_typos_need_long_words_and_the_same_first_letter() -> None:
    assert compatible("How do I bake a cheesecake?", "How do I bake a cheescake?")
    assert not compatible("Can I bake it?", "Can I make it?")  # short words: never
    assert not compatible("What is an ellipse?", "What is an allipse?")  # first letter


def test_analysis_normalises_numbers_and_words() -> None:
    x = analyse("The 3 Musketeers sold twenty-one thousand copies for $2.5k")
    assert dict(x.numbers) == {"3": 1, "21000": 1, "2500": 1}
    assert "musket" in x.words or "musketeer" in x.words
    assert "the" not in x.words
    assert analyse("I don't know").words == {"not"}
    # a lone "one" is an article; "one hundred" is a number
    assert dict(analyse("Pick one colour").numbers) == {}
    assert dict(analyse("Pick one hundred colours").numbers) == {"100": 1}
    assert dict(analyse("five hundred twenty one").numbers) == {"521": 1}
    assert dict(analyse("a thousand").numbers) == {"1000": 1}
    assert dict(analyse("two three").numbers) == {"2": 1, "3": 1}  # a list, not 5
    assert dict(analyse("twenty thirty").numbers) == {"20": 1, "30": 1}


def test_stem_folds_inflection_but_not_comparatives() -> None:
    assert stem("included") == stem("include") == stem("includes")
    assert stem("running") == stem("run")
    assert stem("cities") == stem("city")
    assert stem("permanently") == stem("permanent")
    assert stem("faster") != stem("fast")
    assert stem("older") != stem("old")


def test_cpu_time_is_well_under_half_a_millisecond() -> None:
    pairs = list(REJECT.values()) + list(ACCEPT.values())
    spent = 0.0
    for a, b in pairs:
        guard.clear_caches()
        t0 = time.perf_counter()
        compatible(a, b)
        spent += time.perf_counter() - t0
    assert spent / len(pairs) < 0.0005


def test_default_threshold_is_a_cosine() -> None:
    assert 0.0 < guard.DEFAULT_THRESHOLD < 1.0
    assert round(guard.DEFAULT_THRESHOLD, 2) == guard.DEFAULT_THRESHOLD
