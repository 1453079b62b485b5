"""Vector stores behind one small interface: a local embedded store, Weaviate and pgvector.

Every store keeps chunks by their deterministic ``chunk_id`` (an upsert replaces, never duplicates),
scores by cosine similarity (1.0 = same direction) and breaks score ties by ``chunk_id``, so the three
give the same answers for the same vectors. Open one with :func:`open_store`:

* ``local:///path/chunks.db`` (the default; SQLite + numpy, no server),
* ``weaviate://127.0.0.1:8080?grpc=50051`` (weaviate-client v4, self-provided vectors),
* ``postgresql://user@127.0.0.1:5432/db`` (psycopg 3 + pgvector; ``CREATE EXTENSION vector``).

``name`` is the collection (Weaviate) or table (SQLite, PostgreSQL) holding the chunks.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from taskq.errors import ConfigError, TaskqError

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
WEAVIATE_PAGE = 10_000  # Weaviate's QUERY_MAXIMUM_RESULTS: most objects one query returns or one delete removes
UUID_NAMESPACE = uuid.UUID("5b1f7a8e-2f0c-4b8e-9d55-7b7f3f1d6a21")  # chunk_id -> Weaviate object id


class VectorStoreError(TaskqError):
    """A vector store refused a request or could not be reached; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a document, as stored: the text, where it came from, and its vector."""

    chunk_id: str
    doc_id: str
    position: int
    text: str
    vector: Sequence[float]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """A search answer: a stored chunk and its cosine similarity to the query."""

    doc_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any]
    position: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "chunk_id": self.chunk_id, "text": self.text, "score": self.score,
                "metadata": self.metadata, "position": self.position}


class VectorStore(ABC):
    """The interface every store implements; safe to share between threads."""

    url: str
    name: str
    dim: int

    @abstractmethod
    def upsert(self, chunks: Sequence[Chunk]) -> None:
        """Insert or replace ``chunks`` by ``chunk_id``."""

    @abstractmethod
    def delete_stale(self, doc_id: str, keep: Collection[str]) -> int:
        """Delete the chunks of ``doc_id`` whose id is not in ``keep``; returns how many went."""

    @abstractmethod
    def search(self, vector: Sequence[float], k: int) -> list[Hit]:
        """The ``k`` chunks most similar to ``vector``, best first."""

    @abstractmethod
    def doc_vectors(self, doc_id: str) -> dict[str, list[float]]:
        """The chunks stored for ``doc_id``: chunk id -> vector."""

    def doc_chunk_ids(self, doc_id: str) -> list[str]:
        """The ids of the chunks stored for ``doc_id``."""
        return list(self.doc_vectors(doc_id))

    @abstractmethod
    def chunk_ids(self) -> list[str]:
        """Every stored chunk id, one entry per stored object (a duplicate would show twice)."""

    @abstractmethod
    def drop(self) -> None:
        """Remove the collection or table and everything in it."""

    def close(self) -> None:
        """Release connections."""

    def count(self) -> int:
        return len(self.chunk_ids())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.url}>"


def open_store(url: str, dim: int, name: str = "taskq_chunks") -> VectorStore:
    """The store a URL names (``local://``, ``weaviate://``, ``postgresql://``); see the module doc."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    name = query.pop("name", name)
    if not NAME.match(name):
        raise ConfigError(f"vector store name {name!r} must be a letter then letters, digits or '_' (max 63)")
    if parts.scheme == "local":
        path = url[len("local://"):].split("?", 1)[0]
        if not path:
            raise ConfigError(f"bad local store URL {url!r}: use local:///path/to/chunks.db")
        return LocalStore(url, Path(path), dim, name)
    if parts.scheme == "weaviate":
        return WeaviateStore(url, parts.hostname or "127.0.0.1", parts.port or 8080,
                             int(query.get("grpc", 50051)), dim, name)
    if parts.scheme in ("postgresql", "postgres"):
        return PgVectorStore(url, url.split("?", 1)[0], dim, name)
    raise ConfigError(f"unknown vector store URL {url!r}: use local:///path.db, weaviate://host:port?grpc=P "
                      "or postgresql://user@host:port/db")


def _rank(hits: list[Hit], k: int) -> list[Hit]:
    """Best score first, ties by chunk id: one order for every store."""
    return sorted(hits, key=lambda h: (-round(h.score, 5), h.chunk_id))[:k]


# --------------------------------------------------------------------------- local (SQLite + numpy)


class LocalStore(VectorStore):
    """Chunks in one SQLite file, vectors as float32 blobs; search is an exact numpy scan."""

    def __init__(self, url: str, path: Path, dim: int, name: str) -> None:
        self.url, self.name, self.dim = url, name, dim
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {name} (chunk_id TEXT PRIMARY KEY, doc_id TEXT NOT NULL, "
                         "position INTEGER, text TEXT, metadata TEXT, vector BLOB)")
        self._db.execute(f"CREATE INDEX IF NOT EXISTS {name}_doc ON {name} (doc_id)")

    def upsert(self, chunks: Sequence[Chunk]) -> None:
        import numpy as np

        rows = []
        for c in chunks:
            vector = np.asarray(c.vector, dtype=np.float32)
            if vector.shape != (self.dim,):
                raise VectorStoreError(f"chunk {c.chunk_id} has a vector of shape {vector.shape}, "
                                       f"the store {self.name} holds {self.dim} dimensions")
            rows.append((c.chunk_id, c.doc_id, c.position, c.text, json.dumps(c.metadata), vector.tobytes()))
        with self._lock:
            self._db.executemany(f"INSERT OR REPLACE INTO {self.name} VALUES (?, ?, ?, ?, ?, ?)", rows)

    def doc_vectors(self, doc_id: str) -> dict[str, list[float]]:
        import numpy as np

        with self._lock:
            rows = self._db.execute(f"SELECT chunk_id, vector FROM {self.name} WHERE doc_id = ?", (doc_id,)).fetchall()
        return {r[0]: np.frombuffer(r[1], dtype=np.float32).tolist() for r in rows}

    def delete_stale(self, doc_id: str, keep: Collection[str]) -> int:
        wanted = set(keep)
        with self._lock:
            ids = [r[0] for r in self._db.execute(f"SELECT chunk_id FROM {self.name} WHERE doc_id = ?", (doc_id,))]
            stale = [(i,) for i in ids if i not in wanted]
            self._db.executemany(f"DELETE FROM {self.name} WHERE chunk_id = ?", stale)
        return len(stale)

    def search(self, vector: Sequence[float], k: int) -> list[Hit]:
        import numpy as np

        with self._lock:
            rows = self._db.execute(f"SELECT chunk_id, doc_id, position, text, metadata, vector FROM {self.name}"
                                    ).fetchall()
        if not rows:
            return []
        matrix = np.frombuffer(b"".join(r[5] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        query = np.asarray(vector, dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query) or 1.0)
        scores = matrix @ query / np.where(norms == 0, 1.0, norms)
        best = np.argsort(-scores)[: max(k * 2, k + 8)]  # a margin so that ties are ranked by chunk id
        hits = [Hit(rows[i][1], rows[i][0], rows[i][3], float(scores[i]), json.loads(rows[i][4]), rows[i][2])
                for i in best]
        return _rank(hits, k)

    def chunk_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(f"SELECT chunk_id FROM {self.name}")]

    def drop(self) -> None:
        with self._lock:
            self._db.execute(f"DROP TABLE IF EXISTS {self.name}")

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------- Weaviate


class WeaviateStore(VectorStore):
    """A Weaviate collection with self-provided vectors (no vectorizer module), cosine distance.

    Object ids are UUIDv5 of the chunk id, so an upsert of the same chunk replaces its object.
    """

    def __init__(self, url: str, host: str, port: int, grpc_port: int, dim: int, name: str) -> None:
        try:
            import weaviate
        except ImportError as exc:
            raise ConfigError("the Weaviate store needs weaviate-client: pip install -e '.[rag]'") from exc
        self.url, self.dim = url, dim
        self.name = name[0].upper() + name[1:]  # Weaviate capitalises collection names
        self._lock = threading.Lock()
        try:
            self._client = weaviate.connect_to_local(host=host, port=port, grpc_port=grpc_port)
        except Exception as exc:  # noqa: BLE001 - the client raises several types for "cannot connect"
            raise VectorStoreError(f"cannot reach Weaviate at {host}:{port} (gRPC {grpc_port}): {exc}; "
                                   "start it with `python scripts/services.py start --rag`") from exc
        self._collection = self._ensure()

    @contextmanager
    def _request(self) -> Iterator[None]:
        """The store's lock, with the client's errors (Weaviate down or refusing) as VectorStoreError."""
        from weaviate.exceptions import WeaviateBaseError

        with self._lock:
            try:
                yield
            except WeaviateBaseError as exc:
                raise VectorStoreError(f"Weaviate at {self.url}: {exc}") from exc

    def _ensure(self) -> Any:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        collections = self._client.collections
        if not collections.exists(self.name):
            try:
                collections.create(
                    self.name,
                    vector_config=Configure.Vectors.self_provided(
                        vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)),
                    properties=[  # ids filter as whole values (word tokens would make "a" a stopword)
                        Property(name="chunk_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                        Property(name="doc_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                        Property(name="position", data_type=DataType.INT),
                        Property(name="text", data_type=DataType.TEXT),
                        Property(name="metadata", data_type=DataType.TEXT, index_filterable=False,
                                 index_searchable=False),
                    ])
            except Exception:  # noqa: BLE001 - created meanwhile by another worker
                if not collections.exists(self.name):
                    raise
        return collections.get(self.name)

    def upsert(self, chunks: Sequence[Chunk]) -> None:
        from weaviate.classes.data import DataObject

        if not chunks:
            return
        objects = [DataObject(properties={"chunk_id": c.chunk_id, "doc_id": c.doc_id, "position": c.position,
                                          "text": c.text, "metadata": json.dumps(c.metadata)},
                              uuid=uuid.uuid5(UUID_NAMESPACE, c.chunk_id), vector=[float(x) for x in c.vector])
                   for c in chunks]
        with self._request():
            result = self._collection.data.insert_many(objects)
        if result.has_errors:
            first = next(iter(result.errors.values()))
            raise VectorStoreError(f"Weaviate refused {len(result.errors)} of {len(objects)} chunks: {first}")

    def doc_vectors(self, doc_id: str) -> dict[str, list[float]]:
        """Read in pages by position, since a query answers at most ``WEAVIATE_PAGE`` objects."""
        from weaviate.classes.query import Filter, Sort

        vectors: dict[str, list[float]] = {}
        low = 0
        while True:
            where = Filter.by_property("doc_id").equal(doc_id) & Filter.by_property("position").greater_or_equal(low)
            with self._request():
                page = self._collection.query.fetch_objects(
                    filters=where, sort=Sort.by_property("position"), limit=WEAVIATE_PAGE,
                    return_properties=["chunk_id", "position"], include_vector=True).objects
            known = len(vectors)
            vectors.update({o.properties["chunk_id"]: list(o.vector["default"]) for o in page})
            if len(page) < WEAVIATE_PAGE or len(vectors) == known:
                return vectors
            low = int(page[-1].properties["position"])  # ">=": a chunk of another version may share it

    def delete_stale(self, doc_id: str, keep: Collection[str]) -> int:
        """Delete by filter, again while a request deletes a full ``WEAVIATE_PAGE`` (its bound)."""
        from weaviate.classes.query import Filter

        where = Filter.by_property("doc_id").equal(doc_id)
        if keep:
            where = where & Filter.by_id().contains_none([uuid.uuid5(UUID_NAMESPACE, c) for c in keep])
        removed = 0
        with self._request():
            while True:
                result = self._collection.data.delete_many(where=where)
                removed += result.successful
                if result.failed:
                    raise VectorStoreError(f"Weaviate could not delete {result.failed} stale chunks of {doc_id!r}")
                if result.successful < WEAVIATE_PAGE:
                    return removed

    def search(self, vector: Sequence[float], k: int) -> list[Hit]:
        from weaviate.classes.query import MetadataQuery

        with self._request():
            found = self._collection.query.near_vector(near_vector=[float(x) for x in vector], limit=k + 8,
                                                       return_metadata=MetadataQuery(distance=True))
        hits = [Hit(o.properties["doc_id"], o.properties["chunk_id"], o.properties["text"],
                    1.0 - float(o.metadata.distance), json.loads(o.properties["metadata"] or "{}"),
                    int(o.properties["position"])) for o in found.objects]
        return _rank(hits, k)

    def chunk_ids(self) -> list[str]:
        with self._request():
            return [o.properties["chunk_id"] for o in self._collection.iterator(return_properties=["chunk_id"])]

    def drop(self) -> None:
        with self._request():
            self._client.collections.delete(self.name)

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- pgvector


class PgVectorStore(VectorStore):
    """A PostgreSQL table with a ``vector(dim)`` column and an HNSW cosine index (pgvector).

    A lost connection (PostgreSQL restarted, the backend terminated) is opened again and the statement
    run once more: every statement here is idempotent.
    """

    def __init__(self, url: str, dsn: str, dim: int, name: str) -> None:
        try:
            import psycopg  # noqa: F401
            from pgvector.psycopg import register_vector  # noqa: F401
        except ImportError as exc:
            raise ConfigError("the pgvector store needs psycopg and pgvector: pip install -e '.[rag]'") from exc
        self.url, self.name, self.dim, self._dsn = url, name.lower(), dim, dsn
        self._lock = threading.Lock()
        self._connect(register=False)
        with self._lock:
            self._db.execute("SELECT pg_advisory_lock(7426)")  # two workers creating at once
            try:
                self._db.execute("CREATE EXTENSION IF NOT EXISTS vector")
                self._register()
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {self.name} (chunk_id text PRIMARY KEY, "
                                 f"doc_id text NOT NULL, position integer, text text, metadata jsonb, "
                                 f"embedding vector({dim}))")
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {self.name}_doc ON {self.name} (doc_id)")
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {self.name}_hnsw ON {self.name} "
                                 "USING hnsw (embedding vector_cosine_ops)")
            finally:
                self._db.execute("SELECT pg_advisory_unlock(7426)")

    def _connect(self, register: bool = True) -> None:
        import psycopg

        try:
            self._db = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise VectorStoreError(f"cannot connect to PostgreSQL at {self._dsn}: {exc}; start it with "
                                   "`python scripts/services.py start --rag`") from exc
        if register:
            self._register()

    def _register(self) -> None:
        from pgvector.psycopg import register_vector

        register_vector(self._db)

    def _run(self, sql: str, params: Sequence[Any] = (), many: bool = False, setup: str = "") -> Any:
        """Rows of a query, or the row count of a write, after the ``setup`` statement if any, on one
        connection; one reconnect when the connection was lost; an unreachable server is VectorStoreError."""
        import psycopg

        with self._lock:
            if self._db.closed:
                self._connect()
            try:
                return self._execute(sql, params, many, setup)
            except psycopg.OperationalError as exc:
                if not self._db.closed:
                    raise VectorStoreError(f"PostgreSQL at {self._dsn}: {exc}") from exc
            self._connect()
            try:
                return self._execute(sql, params, many, setup)
            except psycopg.OperationalError as exc:
                raise VectorStoreError(f"PostgreSQL at {self._dsn}: {exc}") from exc

    def _execute(self, sql: str, params: Sequence[Any], many: bool, setup: str) -> Any:
        with self._db.cursor() as cur:
            if setup:
                cur.execute(setup)
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)
            return cur.fetchall() if cur.description else cur.rowcount

    def upsert(self, chunks: Sequence[Chunk]) -> None:
        import numpy as np

        rows = [(c.chunk_id, c.doc_id, c.position, c.text, json.dumps(c.metadata),
                 np.asarray(c.vector, dtype=np.float32)) for c in chunks]
        if not rows:
            return
        self._run(f"INSERT INTO {self.name} (chunk_id, doc_id, position, text, metadata, embedding) "
                  "VALUES (%s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (chunk_id) DO UPDATE SET "
                  "doc_id = EXCLUDED.doc_id, position = EXCLUDED.position, text = EXCLUDED.text, "
                  "metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding", rows, many=True)

    def doc_vectors(self, doc_id: str) -> dict[str, list[float]]:
        rows = self._run(f"SELECT chunk_id, embedding FROM {self.name} WHERE doc_id = %s", (doc_id,))
        return {r[0]: r[1].to_list() for r in rows}

    def delete_stale(self, doc_id: str, keep: Collection[str]) -> int:
        return int(self._run(f"DELETE FROM {self.name} WHERE doc_id = %s AND NOT (chunk_id = ANY(%s))",
                             (doc_id, list(keep))))

    def search(self, vector: Sequence[float], k: int) -> list[Hit]:
        import numpy as np

        query = np.asarray(vector, dtype=np.float32)
        limit = k + 8
        # the HNSW scan yields at most hnsw.ef_search rows (40 by default, 1000 at most)
        rows = self._run(f"SELECT doc_id, chunk_id, text, 1 - (embedding <=> %s) AS score, metadata, position "
                         f"FROM {self.name} ORDER BY embedding <=> %s LIMIT %s", (query, query, limit),
                         setup=f"SET hnsw.ef_search = {min(max(limit, 40), 1000)}")
        return _rank([Hit(r[0], r[1], r[2], float(r[3]), r[4] or {}, r[5]) for r in rows], k)

    def chunk_ids(self) -> list[str]:
        return [r[0] for r in self._run(f"SELECT chunk_id FROM {self.name}")]

    def drop(self) -> None:
        self._run(f"DROP TABLE IF EXISTS {self.name}")

    def close(self) -> None:
        self._db.close()
