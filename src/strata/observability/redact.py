"""PII redaction for text written to logs (sampled prompts and completions).

``redact(text)`` replaces, in this order:

- API keys (``sk-…``, ``Bearer …``) → ``[API_KEY]`` (``redact_keys`` does only this)
- email addresses → ``[EMAIL]``
- payment card numbers: 13 to 19 digits, bare or in the printed groups (4-4-4-4,
  4-4-4-4-n, Amex 4-6-5; spaces or dashes) that pass the Luhn check, so order
  numbers and other random digits stay → ``[CARD]``
- national ids → ``[NATIONAL_ID]``:
  US SSN ``123-45-6789`` (dashed or spaced; never 000/666/9xx area, 00 group or
  0000 serial), UK National Insurance number ``AB 12 34 56 C`` (official prefix
  letters), and a generic pattern: an identity-document label (passport, national
  id, identity card, id number, tax id, personal number, social security, SSN, NIN),
  optionally ``no.``/``number``/``#``/``is``/``:``, then a 5 to 20 character value with
  at least one digit; only the value is replaced
- phone numbers → ``[PHONE]``: international ``+`` followed by 8 to 15 digits
  (spaces, dots, dashes and parentheses between them), and US/NANP numbers with
  separators: ``(555) 123-4567``, ``555-123-4567``, ``555.123.4567``,
  ``1 555 123 4567``. Bare digit runs without a ``+`` or separators are not
  phone numbers here (they are too often ids, amounts or timestamps).

Dates (``2024-01-15``, ``15/01/2024``), times, versions and amounts stay.
"""

from __future__ import annotations

import re

_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}|\b(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*")
_EMAIL = re.compile(
    r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"
)
# Card numbers as printed: one run of digits, or 4-4-4-4(-1..3) or Amex 4-6-5 groups
# with one kind of separator (so runs of dates or amounts are not one "number").
_CARD = re.compile(
    r"(?<![\w\-])(?:\d{13,19}|\d{4}([ \-])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
    r"|\d{4}([ \-])\d{6}\2\d{5})(?![\w\-])"
)
_SSN = re.compile(r"(?<![\d\-])(?!000|666|9\d\d)\d{3}([ \-])(?!00)\d{2}\1(?!0000)\d{4}(?![\d\-])")
_UK_NI = re.compile(
    r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
    re.IGNORECASE,
)
_GENERIC_ID = re.compile(
    r"(?i:\b(?:passport|national[ _\-]?id(?:entity)?|identity[ _\-]?(?:card|number|no)"
    r"|id[ _\-]?(?:card|number|no)|tax[ _\-]?id|personal[ _\-]?(?:id|number)"
    r"|social[ _\-]security(?:[ _\-]number)?|ssn|nin|nino)"
    r"(?:\s*(?:no\.?|number|num|#))?(?:\s+is)?\s*[:#=]?\s*)"
    r"(?=[A-Z0-9\-]*\d)([A-Z0-9][A-Z0-9\-]{3,18}[A-Z0-9])\b",
    re.IGNORECASE,
)
# 8 to 15 digits (E.164), at most two separators between digits.
_INTL_PHONE = re.compile(r"(?<![\w+])\+\d(?:[ ().\-]{0,2}\d){7,14}(?!\d)")
_US_PHONE = re.compile(
    r"(?<![\w+\-.])(?:1[ .\-]?)?(?:\(\d{3}\) ?|\d{3}[ .\-])\d{3}[ .\-]\d{4}(?![\w\-])"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else m.group()


def _generic_id(m: re.Match[str]) -> str:
    return m.group()[: m.start(1) - m.start()] + "[NATIONAL_ID]"


def redact_keys(text: str) -> str:
    """Replace API keys and bearer tokens; logs never carry them."""
    return _KEY.sub("[API_KEY]", text)


def redact(text: str) -> str:
    """Replace API keys and PII (see the module docstring for the patterns)."""
    text = _KEY.sub("[API_KEY]", text)
    text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD.sub(_card, text)
    text = _SSN.sub("[NATIONAL_ID]", text)
    text = _UK_NI.sub("[NATIONAL_ID]", text)
    text = _GENERIC_ID.sub(_generic_id, text)
    text = _INTL_PHONE.sub("[PHONE]", text)
    return _US_PHONE.sub("[PHONE]", text)
