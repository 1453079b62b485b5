"""Chunking with the model's tokenizer, and the three vector stores behind one interface (no queue here)."""

from __future__ import annotations

import pytest

from tasks.embedding import Embedder, chunk_id
from tasks.vectorstores import Chunk, open_store
from tests.rag.conftest import Doc


def test_chunks_are_token_windows_with_overlap(embedder: Embedder, corpus: list[Doc]) -> None:
    text = " ".join(d.text for d in corpus)  # about 1,600 tokens
    tokens = embedder.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = embedder.split(text, 512, 64)
    assert len(pieces) == 4  # windows start at 0, 448, 896, 1344
    for piece in pieces:
        assert piece.text == text[piece.start:piece.end]
        assert len(embedder.tokenizer(piece.text, add_special_tokens=False)["input_ids"]) <= 512
    for a, b in zip(pieces, pieces[1:]):
        assert b.start < a.end, "consecutive chunks share their overlap"
        shared = embedder.tokenizer(text[b.start:a.end], add_special_tokens=False)["input_ids"]
        assert 60 <= len(shared) <= 68
    assert pieces[0].start == 0 and pieces[-1].end == len(text.rstrip())
    assert len(tokens) > 3 * 448
    # a chunk size past what the model embeds is capped, not silently truncated by the model
    assert all(len(embedder.tokenizer(p.text, add_special_tokens=False)["input_ids"]) <= embedder.max_tokens
               for p in embedder.split(text, 5000, 64))
    assert embedder.max_tokens == 510
    assert embedder.split("", 512, 64) == []


def test_a_capped_chunk_size_keeps_the_stride_it_was_given(embedder: Embedder) -> None:
    """600-token windows 50 apart become 510-token windows still 50 apart (not 1 apart: 50 times the chunks)."""
    text = "word " * 2000
    assert len(embedder.tokenizer(text, add_special_tokens=False)["input_ids"]) == 2000
    pieces = embedder.split(text, 600, 550)
    assert [p.start for p in pieces[:3]] == [0, 250, 500]  # "word " is 5 characters
    assert len(pieces) == 31  # windows start at 0, 50, ..., 1500 tokens
    assert [p.start for p in embedder.split(text, 512, 64)] == [5 * t for t in (0, 448, 896, 1344, 1792)]


def test_chunk_ids_are_deterministic() -> None:
    assert chunk_id("doc", 0, "some text") == chunk_id("doc", 0, "some text")
    assert chunk_id("doc", 0, "some text") != chunk_id("doc", 1, "some text")
    assert chunk_id("doc", 0, "some text") != chunk_id("doc", 0, "other text")
    assert chunk_id("doc", 3, "x").startswith("doc:3:")


def test_stores_agree_and_upsert_replaces(embedder: Embedder, corpus: list[Doc], questions: list[dict[str, str]],
                                          weaviate_url: str, postgres_url: str, tmp_path: object, unique: str,
                                          ) -> None:
    """The same chunks and queries give the same ranking and scores on every store; a second upsert of
    the same ids leaves one copy; delete_stale removes exactly the ids not kept."""
    pieces = [(d, p) for d in corpus for p in embedder.split(d.text, 64, 16)]
    vectors = embedder.encode([p.text for _, p in pieces])
    chunks = [Chunk(chunk_id(d.doc_id, p.position, p.text), d.doc_id, p.position, p.text, v, {"source": d.doc_id})
              for (d, p), v in zip(pieces, vectors)]
    query_vectors = embedder.encode([q["q"] for q in questions])
    rankings: dict[str, list[list[tuple[str, float]]]] = {}
    for url in (f"local://{tmp_path}/chunks.db", weaviate_url, postgres_url):
        store = open_store(url, embedder.dim, f"agree_{unique}")
        try:
            store.upsert(chunks)
            store.upsert(chunks[:20])  # replayed: replaces, never duplicates
            assert sorted(store.chunk_ids()) == sorted(c.chunk_id for c in chunks)
            rankings[url] = [[(h.chunk_id, h.score) for h in store.search(v, 3)] for v in query_vectors]
            best = store.search(query_vectors[0], 1)[0]
            assert best.doc_id == questions[0]["doc"] and best.metadata == {"source": best.doc_id}
            assert best.text and best.chunk_id.startswith(best.doc_id + ":")
            doc = corpus[0].doc_id
            mine = sorted(store.doc_chunk_ids(doc))
            assert len(mine) >= 2
            by_id = {c.chunk_id: c.vector for c in chunks}
            assert all(v == pytest.approx(by_id[cid], abs=1e-6) for cid, v in store.doc_vectors(doc).items())
            assert store.delete_stale(doc, mine[:1]) == len(mine) - 1
            assert sorted(store.doc_chunk_ids(doc)) == mine[:1]
            assert store.count() == len(chunks) - (len(mine) - 1)
        finally:
            store.drop()
            store.close()
    local, *others = rankings.values()
    for other in others:
        assert [[cid for cid, _ in r] for r in other] == [[cid for cid, _ in r] for r in local]
        for r_other, r_local in zip(other, local):
            assert [s for _, s in r_other] == pytest.approx([s for _, s in r_local], abs=1e-4)


def test_pgvector_store_reconnects_after_its_connection_is_lost(postgres_url: str, unique: str) -> None:
    """A PostgreSQL restart or a terminated backend costs no write: the store connects again."""
    import psycopg

    store = open_store(postgres_url, 3, f"lost_{unique}")
    try:
        store.upsert([Chunk("a:0:x", "a", 0, "one", [1.0, 0.0, 0.0])])
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                                  "AND backend_type = 'client backend'").fetchall()
        assert ended and all(row[0] for row in ended)
        store.upsert([Chunk("a:1:y", "a", 1, "two", [0.0, 1.0, 0.0])])
        assert sorted(store.doc_chunk_ids("a")) == ["a:0:x", "a:1:y"]
        assert [h.chunk_id for h in store.search([0.0, 1.0, 0.0], 1)] == ["a:1:y"]
    finally:
        store.drop()
        store.close()


def test_pgvector_search_returns_k_hits_past_the_hnsw_default(postgres_url: str, tmp_path: object,
                                                              unique: str) -> None:
    """pgvector's HNSW scan stops at ``hnsw.ef_search`` rows (40 by default): a search for more must still
    give ``k`` hits, nearly the local store's exact ones."""
    import numpy as np

    rng = np.random.default_rng(7)
    chunks = [Chunk(f"d{i % 50}:{i}:x", f"d{i % 50}", i, "t", rng.normal(size=16).tolist()) for i in range(5000)]
    query = rng.normal(size=16).tolist()
    found = {}
    for url in (f"local://{tmp_path}/chunks.db", postgres_url):
        store = open_store(url, 16, f"many_{unique}")
        try:
            store.upsert(chunks)
            found[url] = [h.chunk_id for h in store.search(query, 100)]
        finally:
            store.drop()
            store.close()
    exact, approximate = found.values()
    assert len(exact) == len(approximate) == 100
    assert len(set(exact) & set(approximate)) >= 90


def test_a_document_of_more_than_10000_chunks_is_read_and_pruned_whole_on_every_store(
        weaviate_url: str, postgres_url: str, tmp_path: object, unique: str) -> None:
    """Weaviate answers at most 10,000 objects per query: a large document's chunks are still all found,
    and all of its stale chunks deleted."""
    total = 10_050
    chunks = [Chunk(f"big:{i}:x", "big", i, "t", [1.0, float(i % 7), 0.5]) for i in range(total)]
    for url in (f"local://{tmp_path}/chunks.db", weaviate_url, postgres_url):
        store = open_store(url, 3, f"big_{unique}")
        try:
            store.upsert(chunks)
            assert len(store.doc_vectors("big")) == total, url
            assert store.delete_stale("big", ["big:0:x"]) == total - 1, url
            assert store.chunk_ids() == ["big:0:x"], url
        finally:
            store.drop()
            store.close()


def test_weaviate_down_is_a_vector_store_error(unique: str) -> None:
    """The pipeline retries VectorStoreError: a Weaviate that stopped answering must raise it, not the
    client's own error types."""
    from services import WeaviateServer

    from tasks.vectorstores import VectorStoreError

    server = WeaviateServer().start()
    store = open_store(server.url, 3, f"down_{unique}")
    try:
        store.upsert([Chunk("a:0:x", "a", 0, "one", [1.0, 0.0, 0.0])])
        server.stop()
        with pytest.raises(VectorStoreError, match="Weaviate"):
            store.upsert([Chunk("a:1:y", "a", 1, "two", [0.0, 1.0, 0.0])])
    finally:
        store.close()
        server.stop()


@pytest.mark.parametrize("tokens, overlap", [(0, 0), (1, 1), (64, 64), (64, 100), (64, -1)])
def test_chunk_settings_that_cannot_cut_a_document_are_refused_at_start(tokens: int, overlap: int) -> None:
    """Refused when the settings are read (a worker does not start), not at every document's chunk task."""
    from taskq.errors import ConfigError
    from tasks.rag import RagSettings

    with pytest.raises(ConfigError, match="RAG_CHUNK_OVERLAP"):
        RagSettings.from_env({"RAG_CHUNK_TOKENS": str(tokens), "RAG_CHUNK_OVERLAP": str(overlap)})
    assert RagSettings.from_env({"RAG_CHUNK_TOKENS": "1", "RAG_CHUNK_OVERLAP": "0"}).chunk_tokens == 1
