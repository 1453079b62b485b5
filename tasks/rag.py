"""RAG ingestion as four tasks on four topics: ingest_document -> chunk -> embed -> upsert; plus search.

Every message of one document is keyed by its ``doc_id``, so a document's messages stay in order
through every stage (a new version's chunks reach ``upsert`` after the old version's). ``embed`` is a
batch task: the worker hands it up to 32 records at once and the model embeds them in one call.

Chunk ids are deterministic (``doc_id:position:content-hash``): re-ingesting a document upserts the
same ids, never duplicates. The last chunk of each ingest carries the full list of the document's
chunk ids, and ``upsert`` then deletes the document's other (stale) chunks; an empty text deletes
the document. Each stage flushes the messages it sends before it returns, so its offset is
committed only once the next stage's messages are durable.

Settings (environment): ``RAG_STORE`` (vector store URL, default ``local://~/.taskq/rag.db``),
``RAG_COLLECTION`` (collection or table, default ``taskq_chunks``), ``RAG_CHUNK_TOKENS`` (512),
``RAG_CHUNK_OVERLAP`` (64).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskq.app import Taskq
from taskq.errors import ConfigError
from taskq.task import Request, Task
from tasks.embedding import Embedder, chunk_id
from tasks.vectorstores import Chunk, VectorStore, VectorStoreError, open_store

EMBED_BATCH = 32
EMBED_WAIT = 0.05  # seconds the worker waits to fill an embed batch


@dataclass
class RagSettings:
    """Where chunks go and how documents are cut."""

    store_url: str = ""
    collection: str = "taskq_chunks"
    chunk_tokens: int = 512
    chunk_overlap: int = 64

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1 or not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise ConfigError(f"RAG_CHUNK_TOKENS {self.chunk_tokens} and RAG_CHUNK_OVERLAP {self.chunk_overlap}: "
                              "need tokens >= 1 and 0 <= overlap < tokens")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RagSettings:
        env = os.environ if environ is None else environ
        try:
            values: dict[str, Any] = {
                "store_url": env.get("RAG_STORE") or f"local://{Path.home() / '.taskq' / 'rag.db'}",
                "collection": env.get("RAG_COLLECTION", cls.collection),
                "chunk_tokens": int(env.get("RAG_CHUNK_TOKENS", cls.chunk_tokens)),
                "chunk_overlap": int(env.get("RAG_CHUNK_OVERLAP", cls.chunk_overlap)),
            }
        except ValueError as exc:
            raise ConfigError(f"RAG_CHUNK_TOKENS / RAG_CHUNK_OVERLAP must be integers: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Rag:
    """The pipeline's tasks on ``app``, with one lazily loaded model and vector store per process."""

    app: Taskq
    settings: RagSettings = field(default_factory=RagSettings.from_env)
    embedder: Embedder = field(default_factory=Embedder)
    embed_batch: int = EMBED_BATCH
    _store: VectorStore | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        task = self.app.task
        # the stages that use the store outlast an outage of about 30 s (1, 2, 4, 8, 8, 8 s), in order: each
        # retry waits in the worker holding the document's key; then the message is dead-lettered
        store_retry: dict[str, Any] = {"autoretry_for": (VectorStoreError,), "max_retries": 6, "retry_backoff": True,
                       "retry_backoff_max": 8.0, "retry_jitter": False, "strict_order": True}
        self.ingest_document: Task = task(name="tasks.rag.ingest_document", key="doc_id")(self._ingest_document)
        self.chunk: Task = task(name="tasks.rag.chunk", key="doc_id", **store_retry)(self._chunk)
        self.embed: Task = task(name="tasks.rag.embed", batch_size=self.embed_batch,
                                batch_wait=EMBED_WAIT)(self._embed)
        self.upsert: Task = task(name="tasks.rag.upsert", key="doc_id", **store_retry)(self._upsert)
        self.search_task: Task = task(name="tasks.rag.search")(self.search)

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self.settings.store_url, self.embedder.dim, self.settings.collection)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- the stages (run by workers) -------------------------------------------------------------

    def _ingest_document(self, doc_id: str, text: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check the document and hand it to ``chunk``."""
        if not isinstance(doc_id, str) or not doc_id:
            raise ConfigError(f"doc_id must be a non-empty string, not {doc_id!r}")
        if not isinstance(text, str):
            raise ConfigError(f"text of document {doc_id!r} must be a string, not {type(text).__name__}")
        if metadata is not None and not isinstance(metadata, dict):
            raise ConfigError(f"metadata of document {doc_id!r} must be a JSON object")
        if _has_nul(text) or _has_nul(metadata):  # PostgreSQL keeps NUL in neither text nor jsonb
            raise ConfigError(f"document {doc_id!r} has NUL characters (\\x00) in its text or metadata, which "
                              "not every vector store can keep: remove them")
        sent = self.chunk.apply_async((doc_id, text, metadata or {}), key=doc_id)
        self.app.flush()
        return {"doc_id": doc_id, "chars": len(text), "chunk_task": sent.id}

    def _chunk(self, doc_id: str, text: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """Cut by tokens, name each piece; send each to ``embed``, with its vector when the store has it.

        Every version goes through ``embed`` and ``upsert`` in order, even an unchanged one: the store may
        not have received an earlier, different version still in flight, which this one must replace. A
        chunk id names its text, so a stored vector is the one the model would give again.
        """
        pieces = self.embedder.split(text, self.settings.chunk_tokens, self.settings.chunk_overlap)
        ids = [chunk_id(doc_id, p.position, p.text) for p in pieces]
        stored = self.store.doc_vectors(doc_id)
        if not pieces:  # an empty document: its chunks go, in order behind any in flight
            self.embed.apply_async(kwargs={"doc_id": doc_id, "chunk": None, "keep": []}, key=doc_id)
        for piece, cid in zip(pieces, ids):
            chunk = {"chunk_id": cid, "position": piece.position, "text": piece.text,
                     "metadata": {**metadata, "start": piece.start, "end": piece.end}}
            if cid in stored:
                chunk["vector"] = stored[cid]
            last = piece.position == len(pieces) - 1
            self.embed.apply_async(kwargs={"doc_id": doc_id, "chunk": chunk, "keep": ids if last else None},
                                   key=doc_id)
        self.app.flush()
        return {"doc_id": doc_id, "chunks": len(ids), "unchanged": bool(ids) and set(ids) == set(stored)}

    def _embed(self, requests: list[Request]) -> list[dict[str, Any]]:
        """Embed a batch of chunks in one model call (those without a vector); one ``upsert`` per document,
        or per version of it: a chunk after the one carrying an id list (``keep``) belongs to a newer version,
        so it goes in a later upsert, which the earlier one's pruning cannot remove."""
        chunks = [r.kwargs["chunk"] for r in requests if r.kwargs.get("chunk")]
        texts = [c["text"] for c in chunks if "vector" not in c]
        vectors = iter(self.embedder.encode(texts, batch_size=max(len(texts), 1)))
        open_entries: dict[str, dict[str, Any]] = {}
        upserts: list[dict[str, Any]] = []
        for r in requests:
            doc_id, chunk, keep = r.kwargs["doc_id"], r.kwargs.get("chunk"), r.kwargs.get("keep")
            entry = open_entries.get(doc_id)
            if entry is None:
                entry = open_entries[doc_id] = {"doc_id": doc_id, "chunks": [], "keep": None}
                upserts.append(entry)
            if chunk is not None:
                entry["chunks"].append({**chunk, "vector": chunk["vector"] if "vector" in chunk else next(vectors)})
            if keep is not None:
                entry["keep"] = keep
                del open_entries[doc_id]
        for entry in upserts:
            self.upsert.apply_async(kwargs=entry, key=entry["doc_id"])
        self.app.flush()
        return [{"chunk_id": (r.kwargs.get("chunk") or {}).get("chunk_id")} for r in requests]

    def _upsert(self, doc_id: str, chunks: list[dict[str, Any]], keep: list[str] | None = None) -> dict[str, Any]:
        """Write the chunks; with ``keep``, delete the document's chunks not in it."""
        store = self.store
        store.upsert([Chunk(c["chunk_id"], doc_id, c["position"], c["text"], c["vector"], c["metadata"])
                      for c in chunks])
        removed = store.delete_stale(doc_id, keep) if keep is not None else 0
        return {"doc_id": doc_id, "upserted": len(chunks), "removed": removed}

    # -- querying --------------------------------------------------------------------------------

    def search(self, query: str, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` stored chunks nearest to ``query``: doc_id, chunk_id, text, score, metadata."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a whole number of hits, 1 or more, not {k!r}")
        vector = self.embedder.encode([query])[0]
        return [hit.as_dict() for hit in self.store.search(vector, k)]

    def ingest(self, doc_id: str, text: str, metadata: dict[str, Any] | None = None) -> Any:
        """Queue a document (``ingest_document.delay``); an empty ``text`` deletes it."""
        return self.ingest_document.apply_async((doc_id, text, metadata or {}), key=doc_id)


def _has_nul(value: Any) -> bool:
    """True if a NUL character is in ``value``, a string or JSON value (keys included)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _example_pipeline() -> Rag:
    """The pipeline of the example app ``tasks.app``."""
    from tasks.app import app

    return Rag(app)


rag = _example_pipeline()
ingest_document, chunk, embed, upsert = rag.ingest_document, rag.chunk, rag.embed, rag.upsert
search = rag.search
