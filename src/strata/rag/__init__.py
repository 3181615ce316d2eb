"""Retrieval-augmented generation: collections of documents, chunked, embedded and
indexed in PostgreSQL (pgvector HNSW + full text), searched by hybrid retrieval,
and answered with numbered, cited sources.

Modules: ``config`` (settings), ``extract`` (text from files), ``chunking``
(structure first, then a token budget with overlap), ``lexemes`` (full text over
keyed hashes of lexemes: no plaintext in the index), ``fusion`` (reciprocal rank
fusion), ``service`` (collections, ingestion, search), ``prompt`` (grounded
prompts and citations), ``metrics`` (recall@k, MRR, nDCG@10), ``evaluate``
(labelled query sets).
"""
