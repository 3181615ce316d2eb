"""The usage spill file (``<data_dir>/usage-spill.jsonl``) as GDPR requests see it:
rows read, and rows rewritten in place (atomically) by an erasure."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SPILL_FILE = "usage-spill.jsonl"


def spill_path(data_dir: Path | None) -> Path | None:
    path = data_dir / SPILL_FILE if data_dir is not None else None
    return path if path is not None and path.exists() else None


def rows(data_dir: Path | None) -> Iterator[dict[str, Any]]:
    """Every readable row (lines cut short by a crash are skipped)."""
    path = spill_path(data_dir)
    if path is None:
        return
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            yield row


def rewrite(data_dir: Path | None, change: Callable[[dict[str, Any]], bool]) -> int:
    """Apply ``change`` to every row (it edits the row in place and says whether it
    did); the file is replaced atomically when any row changed. How many changed."""
    path = spill_path(data_dir)
    if path is None:
        return 0
    changed, out = 0, []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if isinstance(row, dict) and change(row):
            line = json.dumps(row)
            changed += 1
        out.append(line)
    if changed:
        tmp = path.with_suffix(".erase.tmp")
        tmp.write_text("".join(line + "\n" for line in out))
        os.replace(tmp, path)
    return changed
