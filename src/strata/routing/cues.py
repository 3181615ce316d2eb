"""Request cues for complexity scoring: pure Python, tens of microseconds.

``features(body)`` reads an OpenAI chat request body (``messages`` whose content
is a string or a list of parts; optional ``tools`` and ``response_format``) and
returns named cues: log-scaled lengths and turn count, and counts in [0, 1] of
code, math, proofs, multi-step instructions, requested structure or long
output, tools, reasoning verbs, constraints, and easy-task and brevity cues.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

Tier = Literal["strong", "cheap"]


def route(score: float, threshold: float) -> Tier:
    """Strong at or above the threshold, cheap below."""
    return "strong" if score >= threshold else "cheap"


CHARS_PER_TOKEN = 4  # English, roughly; lengths are log-scaled, so rough is fine
# Cue regexes scan at most this much of the last message (head and tail: where
# the task is stated), so a pasted 100 kB document costs what a page does.
SCAN_HEAD, SCAN_TAIL = 1500, 500

_INLINE_CODE = re.compile(r"`[^`\n]{2,80}`")
# One leading \b over the keyword group: ~4x faster than an alternation of \b...s.
_SYNTAX = re.compile(
    r"\b(?:def \w+\(|class \w+\s*[:({]|func \w+\(|function\s*\w*\s*\(|self\.\w"
    r"|(?:const|let|var) \w+\s*=|(?:SELECT|select)\b[^\n]{1,120}?\b(?:FROM|from)\b)"
    r"|=>|#include|\.\w+\([^)\n]{0,80}\)|[{};]$|^[ \t]*(?:import|from|package|using) \w",
    re.M,
)
_CODE_TASK = re.compile(
    r"\b(?:implement\w*|refactor\w*|debug\w*|deadlock\w*|race condition|memory leak|leaks memory"
    r"|thread-safe|lock-free|concurren\w*|algorithm\w*|optimi[sz]e|parser|interpreter|compiler"
    r"|asyncio|goroutines?|o\(n[^)]*\)|time complexity of \w+ operation|reconcile|migration"
    r"|schema|idempoten\w*|write an? (?:\w+ ){0,3}(?:program|script|service|library|operator"
    r"|decorator|server|query that))"
)
_MATH = re.compile(
    r"\\(?:frac|int|sum|sqrt)|\d\s*[-+*/^=<>]\s*\d|\^\s*[\d(n]|\b[xyn]\^|\b(?:integral"
    r"|derivative|probability|expected (?:value|number)|theorem|equation|matri(?:x|ces)|eigen\w*"
    r"|recurrence|variance|converge\w*|lagrange|polynomial|combinatori\w*|lemma|how many ways)\b"
)
_PROOF = re.compile(r"\b(?:prove|proof|derive|derivation|show that|by induction)\b")
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+\S", re.M)
_STEPS = re.compile(
    r"\bstep[- ]by[- ]step\b|\bfirst\b.{0,200}\bthen\b|\bthen\b|\bafter that\b|\bfinally\b"
    r"|\bfor (?:each|every)\b|\bif no\b|\botherwise\b|\bbreak (?:it )?down\b",
    re.S,
)
_STRUCTURED = re.compile(r"\b(?:json|yaml|table|schema|csv|xml|markdown|openapi)\b")
_LONG_OUTPUT = re.compile(
    r"\b(?:detailed|comprehensive|complete|full|thorough|in[- ]depth|runbook|roadmap"
    r"|itinerary|day-by-day|week-by-week|month-by-month|document|report|proposal|review"
    r"|at least \d+|\d[\d,]{2,} ?-?words?)\b"
)
_REASONING = re.compile(
    r"\b(?:why|explain\w*|compare\w*|comparison|analy[sz]\w*|design\w*|trade-?offs?|evaluate\w*"
    r"|justify|pros and cons|recommend\w*|strategy|architecture|plan\b|critically|assess\w*"
    r"|reason(?:ing)? through|estimate|root cause|investigat\w*|implications|mechanisms?"
    r"|break-even|risks?|minimi[sz]e|maximi[sz]e|optimal)\b"
)
_CONSTRAINTS = re.compile(
    r"\b(?:must|without|at most|no more than|under \$?\d|within|budget|ensure|handl\w+"
    r"|constraints?|only|while|respecting)\b|\b\d+(?:\.\d+)?\s?(?:k|m|gb|tb|ms|%)(?!\w)"
    r"|\bper (?:second|month|day|week|year)\b"
)
_SIMPLE = re.compile(
    r"\b(?:translat\w+|summari[sz]\w*|tl;dr|sum up|condense|rewrite|rephrase|paraphrase"
    r"|proofread|fix the (?:grammar|spelling|typos?|syntax)|correct the|classify|categori[sz]e"
    r"|label each|sentiment|extract|pull out|convert|title case|capitali[sz]e|sort these"
    r"|haiku|poem|limerick|slogan|joke|caption|rhyme|name ideas|suggest (?:a|three|a few) "
    r"|is this|what does|what is|what's|who (?:is|was|wrote|painted|invented)|how do i"
    r"|how many|define)\b|^(?:hi|hello|hey|thanks|thank you|ok|lol|good morning)\b"
)
_BREVITY = re.compile(
    r"\b(?:in (?:one|two|a) (?:sentence|line|paragraph)s?|one-line|one sentence|keep it short"
    r"|short list|in simple (?:terms|words)|for a beginner|for a \d+-year-old|under 280"
    r"|\d+ words or less|briefly)\b"
)
# Quoted or pasted material: it adds length, not difficulty.
_QUOTED = re.compile(r"```.*?```|'[^'\n]{12,}'|\"[^\"\n]{12,}\"|:\s*\n\n.*", re.S)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message (of the last message if no user one)."""
    messages = body.get("messages") or []
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text(m.get("content"))
    return _text(messages[-1].get("content")) if messages and isinstance(messages[-1], dict) else ""


def _count(pattern: re.Pattern[str], text: str, cap: int) -> float:
    return min(len(pattern.findall(text)), cap) / cap


def features(body: Mapping[str, Any]) -> dict[str, float]:
    """Cheap cues of a chat request body; every value is in [0, 1] or a log length."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = last_user_text(body)
    scan = last if len(last) <= SCAN_HEAD + SCAN_TAIL else last[:SCAN_HEAD] + last[-SCAN_TAIL:]
    low = scan.lower()
    instruction = _QUOTED.sub(" ", low)
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    tools = body.get("tools") or body.get("functions") or []
    fences = scan.count("```") // 2
    return {
        "instruction_tokens": math.log1p(len(instruction) / CHARS_PER_TOKEN),
        "total_tokens": math.log1p(
            sum(len(_text(m.get("content"))) for m in messages) / CHARS_PER_TOKEN
        ),
        "turns": math.log1p(max(sum(1 for m in messages if m.get("role") == "user") - 1, 0)),
        "code": min(
            fences + len(_SYNTAX.findall(scan)) / 3 + len(_INLINE_CODE.findall(scan)) / 4, 1
        ),
        "code_task": _count(_CODE_TASK, instruction, 2),
        "math": _count(_MATH, low, 3),
        "proof": _count(_PROOF, instruction, 1),
        "multi_step": min(_count(_NUMBERED, scan, 4) + _count(_STEPS, instruction, 2), 1),
        "structured": 1.0
        if fmt_type in ("json_object", "json_schema")
        else _count(_STRUCTURED, instruction, 1),
        "long_output": _count(_LONG_OUTPUT, instruction, 2),
        "tools": min(len(tools) / 3, 1) if isinstance(tools, list) else 0.0,
        "reasoning": _count(_REASONING, instruction, 3),
        "constraints": _count(_CONSTRAINTS, instruction, 4),
        "simple_task": _count(_SIMPLE, instruction, 1),
        "brevity": _count(_BREVITY, instruction, 1),
    }
