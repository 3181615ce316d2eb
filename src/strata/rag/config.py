"""The ``rag:`` settings section, and a collection's own settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Reciprocal rank fusion constant (Cormack et al. 2009): 60 damps the head of each
# list so one retriever's first place cannot outvote agreement further down.
RRF_K = 60
MAX_TOP_K = 50
MAX_FILTER_KEYS = 10


class ChunkingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Estimated tokens per chunk (words and punctuation; see rag.chunking). 200 keeps
    # chunk plus heading under MiniLM's 256-wordpiece window, so nothing is cut off.
    max_tokens: int = Field(default=200, ge=16, le=4000)
    overlap_tokens: int = Field(default=40, ge=0, le=1000)

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> ChunkingSettings:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self


MetaType = Literal["string", "number", "boolean"]


class RagSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Embedding alias of new collections unless they name one (models.<alias>,
    # kind: embedding): the embedded MiniLM, a local BGE, or an OpenAI-compatible API.
    embeddings: str = "embed-default"
    chunking: ChunkingSettings = ChunkingSettings()
    # Texts per embedding call during ingestion (one forward pass for local models).
    embed_batch_size: int = Field(default=32, gt=0, le=2048)
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)
    # Candidates each retriever (vector, full text) hands to the fusion.
    candidates: int = Field(default=40, ge=1, le=1000)
    # Results below this cosine similarity to the query are dropped (the floor keeps
    # an answer from being "grounded" on unrelated text). 0 disables it.
    min_similarity: float = Field(default=0.15, ge=-1, le=1)
    # HNSW search breadth (pgvector hnsw.ef_search); at least `candidates` is used.
    ef_search: int = Field(default=80, ge=1, le=1000)
    # The chat alias of POST .../answer when the request names no model.
    answer_model: str = "default"
    # Grounded answers: the context window assumed when a deployment declares none,
    # and the tokens kept free for the answer (max_tokens when the request sets it).
    default_context_tokens: int = Field(default=2048, ge=256)
    answer_tokens: int = Field(default=512, ge=16)
    # Documents larger than this (bytes, before extraction) are refused.
    max_document_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    # Uploads larger than this in all (bytes) are ingested by a job worker, not in the
    # request (202 and an ingestion to poll); smaller ones may ask for it too.
    background_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
