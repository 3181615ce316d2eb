"""The guard's vocabulary (see strata.cache.guard): words that never change an
answer, relation and negation words, contractions, general abbreviations, units,
number words and Roman numerals. General knowledge, not fitted to any dataset."""

from __future__ import annotations

import re

# --- vocabulary ------------------------------------------------------------------

# Words that never change which answer is right: function words and question
# framing. Compared before stemming.


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOP = _wordset(
    """
    a an the this that these those some any all every each one ones such
    i me my mine myself you your yours yourself we us our ours he him his she her
    hers it its they them their theirs someone somebody something anyone anything
    be am is are was were been being do does did done doing have has had having
    can could will would shall should may might must ought
    how what which whats hows
    and or but nor if whether so then also just really very quite actually
    at on in of for with by about as per to into onto from via using
    please pls plz kindly tell explain describe show give suggest recommend
    let lets know want like
    help need wondering wonder curious question way ways possible able
    calculate compute find determine convert solve work
    many much there here
    """
)

# Stop words that are also relations (rule 5) and the form they are compared in.
_RELATION = {
    "to": "to",
    "into": "to",
    "onto": "to",
    "toward": "toward",
    "towards": "toward",
    "from": "from",
    "of": "of",
    "in": "in",
    "for": "for",
    "by": "by",
    "per": "per",
    "than": "than",
    "instead": "instead",
    "before": "before",
    "after": "after",
    "over": "over",
    "under": "under",
    "above": "above",
    "below": "below",
    "until": "until",
    "since": "since",
    "against": "against",
}

_NEGATION = _wordset("not no never without none nothing cannot neither nor")

# n't and apostrophe-less contractions people type.
_CONTRACTIONS = {
    "can't": "can not",
    "won't": "will not",
    "shan't": "shall not",
    "ain't": "is not",
    "dont": "do not",
    "doesnt": "does not",
    "didnt": "did not",
    "isnt": "is not",
    "arent": "are not",
    "wasnt": "was not",
    "werent": "were not",
    "cant": "can not",
    "couldnt": "could not",
    "shouldnt": "should not",
    "wouldnt": "would not",
    "havent": "have not",
    "hasnt": "has not",
    "hadnt": "had not",
    "mustnt": "must not",
    "neednt": "need not",
    "whats": "what is",
    "hows": "how is",
    "wheres": "where is",
    "whos": "who is",
    "thats": "that is",
    "im": "i am",
    "ive": "i have",
    "youre": "you are",
    "theyre": "they are",
    "w/o": "without",
    "w/": "with",
    "u": "you",
    "r": "are",
    "alot": "a lot",
}

# General abbreviations and spellings (not fitted to any benchmark pair).
_ABBREV = {
    # units
    "km": "kilometer",
    "kms": "kilometer",
    "kilometre": "kilometer",
    "kilometres": "kilometer",
    "m": "meter",
    "metre": "meter",
    "metres": "meter",
    "cm": "centimeter",
    "centimetre": "centimeter",
    "mm": "millimeter",
    "millimetre": "millimeter",
    "mi": "mile",
    "ft": "foot",
    "feet": "foot",
    "yd": "yard",
    "kg": "kilogram",
    "kgs": "kilogram",
    "g": "gram",
    "mg": "milligram",
    "lb": "pound",
    "lbs": "pound",
    "oz": "ounce",
    "l": "liter",
    "litre": "liter",
    "litres": "liter",
    "ml": "milliliter",
    "millilitre": "milliliter",
    "millilitres": "milliliter",
    "tbsp": "tablespoon",
    "tbs": "tablespoon",
    "tsp": "teaspoon",
    "hr": "hour",
    "hrs": "hour",
    "min": "minute",
    "mins": "minute",
    "sec": "second",
    "secs": "second",
    "c": "celsius",
    "f": "fahrenheit",
    # currencies (ISO codes)
    "usd": "dollar",
    "eur": "euro",
    "gbp": "british pound",
    "jpy": "japanese yen",
    "cny": "chinese yuan",
    "inr": "indian rupee",
    "cad": "canadian dollar",
    "aud": "australian dollar",
    "chf": "swiss franc",
    "mxn": "mexican peso",
    # general
    "int": "integer",
    "str": "string",
    "char": "character",
    "bool": "boolean",
    "info": "information",
    "app": "application",
    "apps": "application",
    "repo": "repository",
    "config": "configuration",
    "approx": "approximately",
    "lcm": "least common multiple",
    "gcd": "greatest common divisor",
    "gcf": "greatest common factor",
    "percentage": "percent",
    "people": "person",
    "children": "child",
    "men": "man",
    "women": "woman",
    "teeth": "tooth",
    "mice": "mouse",
    "twice": "2 time",
    "hourly": "per hour",
    "daily": "per day",
    "weekly": "per week",
    "monthly": "per month",
    "yearly": "per year",
    "annually": "per year",
    "thrice": "3 time",
}

_UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_ORDINALS = {
    "1": "first",
    "2": "second",
    "3": "third",
    "4": "fourth",
    "5": "fifth",
    "6": "sixth",
    "7": "seventh",
    "8": "eighth",
    "9": "ninth",
    "10": "tenth",
}
_ROMAN = re.compile(r"^X{0,3}(?:IX|IV|V?I{0,3})$")
_ROMAN_VALUE = {"I": 1, "V": 5, "X": 10}
