"""One-text embeddings (a search query, a semantic cache lookup) on ONNX Runtime.

Why: on a small CPU a single short query through torch costs 22-29 ms for
all-MiniLM-L6-v2, most of it per-operator overhead; the same graph on ONNX Runtime
takes 5-9 ms. Batches (ingestion) stay on torch, where that overhead is spread
over 32 texts.

The transformer is exported once with torch's exporter (``torch.onnx.export``,
dynamo) into a cache directory (``$STRATA_CACHE_DIR``, else
``~/.cache/strata/onnx``; a derived artifact, like a compiled wheel, shared by
every server on the machine), keyed by the model's files, under a file lock so
concurrent servers export once, and loaded from there afterwards. Mean pooling
and normalisation are done here, as sentence-transformers does them. The export
is checked against torch on sample texts at load; any failure (a missing package,
an unexportable model, outputs that differ) leaves the torch path in place, with
a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("strata.providers")

# Cosine between the torch and ONNX vectors of the check texts, at least.
MIN_AGREEMENT = 0.9999
CHECK_TEXTS = ("warm up", "How do I reset my password after the account was locked?")
# The export takes about 30 s on two cores.
EXPORT_TIMEOUT_S = 600


def model_key(model_dir: Path) -> str:
    """Names the export after the model's files (a changed model exports again)."""
    h = hashlib.sha256(str(model_dir.resolve()).encode())
    for p in sorted(model_dir.rglob("*")):
        if p.is_file() and p.suffix in {".safetensors", ".bin", ".json"}:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


class OnnxQueryEncoder:
    """``encode(text) -> (unit vector, tokens)`` for a mean-pooled, normalised model."""

    def __init__(self, session: Any, tokenizer: Any, max_length: int) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, text: str) -> tuple[list[float], int]:
        import numpy as np

        batch = self.tokenizer(
            [text], return_tensors="np", truncation=True, max_length=self.max_length
        )
        ids = batch["input_ids"].astype(np.int64)
        mask = batch["attention_mask"].astype(np.int64)
        (out,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        weights = mask[..., None].astype(out.dtype)
        pooled = (out * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
        vector = pooled[0] / max(float(np.linalg.norm(pooled[0])), 1e-12)
        return vector.tolist(), int(ids.shape[1])


def _export(model_dir: Path, target: Path) -> None:
    """Export in a child process: the exporter's output, warnings, global settings
    and memory (several times the model's size) stay out of the server."""
    import subprocess
    import sys

    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = [sys.executable, "-m", "strata.providers.onnx_query", str(model_dir), str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"export failed: {tail[0][:300]}")
    os.replace(tmp, target)  # atomic: a concurrent loader sees all of it or none


def _export_here(model_dir: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)

    class Graph(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: Any, mask: Any) -> Any:
            types = torch.zeros_like(ids)
            return self.inner(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]

    sample = model.tokenizer([CHECK_TEXTS[1]], return_tensors="pt")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    with torch.no_grad():
        torch.onnx.export(
            Graph(model[0].auto_model).eval(),
            (sample["input_ids"], sample["attention_mask"]),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_shapes={"ids": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}},
            dynamo=True,
            external_data=False,
        )


def cache_dir() -> Path:
    from strata.settings import environ

    base = environ("STRATA_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "strata" / "onnx"


def export_path(model_dir: Path) -> Path:
    return cache_dir() / f"{model_dir.name}-{model_key(model_dir)}.onnx"


def exported(model_dir: Path) -> bool:
    """The model has been exported on this machine (loading it takes seconds)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return export_path(model_dir).exists()


def build(model: Any, model_dir: Path, max_length: int | None) -> OnnxQueryEncoder | None:
    """The ONNX encoder for a loaded SentenceTransformer, or None (torch stays)."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime is not installed: single-text embeddings stay on torch")
        return None
    try:
        import fcntl

        target = export_path(model_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one export per machine, others wait
            if not target.exists():
                log.info("exporting %s to ONNX for single-text embeddings (once)", model_dir.name)
                _export(model_dir, target)
        options = ort.SessionOptions()
        # Two threads, not spinning: measured here, a query in 5.8 ms instead of 9.1
        # for about the same CPU (12.5 vs 11.4 ms); spinning threads would burn the
        # event loop's core between queries.
        options.intra_op_num_threads = min(2, os.cpu_count() or 1)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        encoder = OnnxQueryEncoder(session, model.tokenizer, max_length or 512)
        for text in CHECK_TEXTS:
            want = model.encode(
                [text], convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )[0]
            got, _ = encoder.encode(text)
            agreement = float(sum(a * b for a, b in zip(want.tolist(), got, strict=True)))
            if agreement < MIN_AGREEMENT:
                log.warning(
                    "ONNX export of %s disagrees with torch (cosine %.6f): not used",
                    model_dir.name,
                    agreement,
                )
                return None
        return encoder
    except Exception as exc:  # any failure: the torch path is always there
        log.warning("ONNX single-text path not available (%s: %s)", type(exc).__name__, exc)
        return None


if __name__ == "__main__":  # the child process of _export
    import sys
    import warnings

    warnings.simplefilter("ignore")
    _export_here(Path(sys.argv[1]), Path(sys.argv[2]))
