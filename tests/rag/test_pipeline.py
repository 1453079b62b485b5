"""The RAG pipeline on real Kafka and Redis, into each real vector store, with the real model."""

from __future__ import annotations

import time
from typing import Any

import pytest

from taskq import Taskq
from taskq.inspect import lag
from tasks.embedding import Embedder, chunk_id
from tasks.rag import Rag, RagSettings
from tasks.vectorstores import Chunk, open_store
from tests.rag.conftest import Doc, expected_ids
from tests.support import wait_results, wait_until, worker_thread

STAGES = ["tasks.rag.ingest_document", "tasks.rag.chunk", "tasks.rag.embed", "tasks.rag.upsert"]


def make_pipeline(kafka_url: str, redis_url: str, store_url: str, unique: str, embedder: Embedder,
                  **settings: Any) -> Rag:
    app = Taskq(f"rag{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"rag{unique}.",
                default_partitions=3)
    return Rag(app, RagSettings(store_url=store_url, collection=f"chunks_{unique}", **settings), embedder=embedder)


def drained(rag: Rag) -> bool:
    """True when the pipeline's group has committed every message of its four topics."""
    return lag(rag.app)["total"] == 0


def test_pipeline_finds_the_right_document_on_every_store(
        kafka_url: str, redis_url: str, store_url: str, unique: str, embedder: Embedder, corpus: list[Doc],
        questions: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    rag = make_pipeline(kafka_url, redis_url, store_url, unique, embedder)
    expected = expected_ids(embedder, corpus)
    every = set().union(*expected.values())
    store = open_store(store_url, embedder.dim, rag.settings.collection)
    try:
        with worker_thread(rag.app, tasks=STAGES, concurrency=4):
            sent = [rag.ingest(d.doc_id, d.text, d.metadata) for d in corpus]
            rag.app.flush()
            wait_until(lambda: set(store.chunk_ids()) == every, 120, "every chunk of the corpus stored")
            assert sorted(store.chunk_ids()) == sorted(every), "each chunk stored once"

            misses = []
            for item in questions:
                hits = rag.search(item["q"], k=3)
                if hits[0]["doc_id"] != item["doc"]:
                    misses.append((item["q"], item["doc"], [(h["doc_id"], round(h["score"], 3)) for h in hits]))
            assert not misses, f"{len(misses)} of {len(questions)} questions found the wrong document first: {misses}"
            hit = rag.search(questions[0]["q"], k=1)[0]
            assert set(hit) >= {"doc_id", "chunk_id", "text", "score", "metadata"}
            assert hit["metadata"]["source"] == f"{hit['doc_id']}.md" and 0 < hit["score"] <= 1.0

            # a second ingest of the same documents changes nothing: not one chunk is re-embedded
            chunk_tasks = [r.get(timeout=60)["chunk_task"] for r in sent]
            first = wait_results(rag.app, chunk_tasks, 60)
            assert all(r is not None and r.result["unchanged"] is False for r in first)
            wait_until(lambda: drained(rag), 60, "the first ingest through every stage", interval=0.5)
            snapshot = sorted(store.chunk_ids())
            encoded: list[str] = []
            encode = embedder.encode
            monkeypatch.setattr(embedder, "encode", lambda texts, batch_size=32: encoded.extend(texts) or encode(
                texts, batch_size))
            again = [rag.ingest(d.doc_id, d.text, d.metadata) for d in corpus]
            second = wait_results(rag.app, [r.get(timeout=60)["chunk_task"] for r in again], 60)
            assert all(r is not None and r.result["unchanged"] is True for r in second)
            wait_until(lambda: drained(rag), 60, "the second ingest through every stage", interval=0.5)
            assert encoded == [], "no chunk of an unchanged document is embedded again"
            assert sorted(store.chunk_ids()) == snapshot
            monkeypatch.undo()

            # changing a document replaces its chunks; an empty text deletes it
            tides = next(d for d in corpus if d.doc_id == "tides")
            changed = Doc("tides", tides.text + "\nTide tables predict the times and heights of the water.\n",
                          tides.metadata)
            new_ids = expected_ids(embedder, [changed])["tides"]
            assert new_ids != expected["tides"]
            rag.ingest("tides", changed.text, changed.metadata)
            rag.ingest("morse", "")
            rag.app.flush()
            want = (every - expected["tides"] - expected["morse"]) | new_ids
            wait_until(lambda: set(store.chunk_ids()) == want, 60, "stale chunks replaced and a deleted doc gone")
            assert sorted(store.chunk_ids()) == sorted(want)
            assert all(h["doc_id"] != "morse" for h in rag.search("How is SOS sent with dots and dashes?", k=5))
    finally:
        store.drop()
        store.close()
        rag.close()
        rag.app.close()


def test_a_document_changed_and_changed_back_ends_as_the_last_ingest(
        kafka_url: str, redis_url: str, tmp_path: Any, unique: str, embedder: Embedder) -> None:
    """A, then B and A again in quick succession: the store ends with A's chunks, not B's (the
    "unchanged" check must not compare against a store that has not yet received B)."""
    store_url = f"local://{tmp_path / 'chunks.db'}"
    rag = make_pipeline(kafka_url, redis_url, store_url, unique, embedder)
    text_a = "Lighthouses guide ships with a beam of light that turns at night. " * 3
    text_b = "Bread rises because yeast makes carbon dioxide in the dough. " * 3
    ids_a = {chunk_id("doc", p.position, p.text) for p in embedder.split(text_a)}
    ids_b = {chunk_id("doc", p.position, p.text) for p in embedder.split(text_b)}
    store = open_store(store_url, embedder.dim, rag.settings.collection)
    try:
        with worker_thread(rag.app, tasks=STAGES, concurrency=4):
            rag.ingest("doc", text_a)
            rag.app.flush()
            wait_until(lambda: set(store.chunk_ids()) == ids_a, 60, "the first version stored")
            rag.ingest("doc", text_b)
            last = rag.ingest("doc", text_a)
            rag.app.flush()
            last.get(timeout=60)
            wait_until(lambda: drained(rag), 60, "every stage done with the three ingests", interval=0.5)
            assert set(store.chunk_ids()) == ids_a, "the store holds the last ingested text"
            assert ids_a != ids_b
    finally:
        store.drop()
        store.close()
        rag.close()
        rag.app.close()


def test_a_document_with_nul_characters_is_refused_at_ingest_on_every_store(
        kafka_url: str, redis_url: str, tmp_path: Any, unique: str, embedder: Embedder) -> None:
    """PostgreSQL cannot store NUL in text or JSON: rather than a dead letter at ``upsert`` on one store
    only (after the model's work), ``ingest_document`` refuses such a document, whatever the store."""
    rag = make_pipeline(kafka_url, redis_url, f"local://{tmp_path / 'chunks.db'}", unique, embedder)
    try:
        with worker_thread(rag.app, tasks=STAGES[:1], concurrency=1):
            for text, metadata in (("binary\x00junk", {}), ("fine", {"title": "a\x00b"})):
                result = rag.ingest("nul", text, metadata)
                with pytest.raises(Exception, match="NUL") as info:
                    result.get(timeout=60)
                assert "ConfigError" in type(info.value).__name__ + str(result.traceback)
    finally:
        rag.close()
        rag.app.close()


def test_a_vector_store_outage_is_retried_not_dead_lettered(
        kafka_url: str, redis_url: str, postgres_url: str, unique: str, embedder: Embedder) -> None:
    """PostgreSQL refusing connections for a few seconds: the stages that use the store retry (with a
    bound), the document is stored once the outage ends, and nothing is dead-lettered."""
    import psycopg

    rag = make_pipeline(kafka_url, redis_url, postgres_url, unique, embedder)
    store = open_store(postgres_url, embedder.dim, rag.settings.collection)
    text = "Glaciers move slowly downhill under their own weight, carving valleys as they go. " * 2
    want = {chunk_id("late", p.position, p.text) for p in embedder.split(text)}
    admin = psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/template1", autocommit=True)
    try:
        with worker_thread(rag.app, tasks=STAGES, concurrency=4):
            rag.ingest("early", "Snow falls in winter.")
            rag.app.flush()
            wait_until(lambda: store.doc_chunk_ids("early"), 60, "the first document stored")
            admin.execute("ALTER DATABASE postgres WITH ALLOW_CONNECTIONS false")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'postgres'")
            rag.ingest("late", text)
            rag.app.flush()
            time.sleep(4)
            admin.execute("ALTER DATABASE postgres WITH ALLOW_CONNECTIONS true")
            wait_until(lambda: set(store.doc_chunk_ids("late")) == want, 60, "the document stored after the outage")
            wait_until(lambda: drained(rag), 60, "every stage done", interval=0.5)
        dead = {t: sum(h for _, h in rag.app.broker.watermarks(f"{t}.dlq").values())
                for t in (rag.chunk.topic, rag.upsert.topic) if f"{t}.dlq" in rag.app.broker.list_topics()}
        assert not any(dead.values()), dead
    finally:
        admin.execute("ALTER DATABASE postgres WITH ALLOW_CONNECTIONS true")
        admin.close()
        store.drop()
        store.close()
        rag.close()
        rag.app.close()


def test_two_versions_of_a_document_in_one_embed_batch_keep_every_chunk_of_the_newer(
        kafka_url: str, redis_url: str, tmp_path: Any, unique: str, embedder: Embedder) -> None:
    """One embed batch holds the end of version 1 (with its id list) and the start of version 2: the
    upsert that prunes version 1's stale chunks must not take version 2's first chunks with them."""
    rag = make_pipeline(kafka_url, redis_url, f"local://{tmp_path / 'chunks.db'}", unique, embedder)
    store = open_store(rag.settings.store_url, embedder.dim, rag.settings.collection)

    def send(version: str, position: int, ids: list[str], last: bool) -> None:
        text = f"Version {version}, part {position}: rivers carry sand to the sea."
        chunk = {"chunk_id": ids[position], "position": position, "text": text, "metadata": {}}
        rag.embed.apply_async(kwargs={"doc_id": "doc", "chunk": chunk, "keep": ids if last else None}, key="doc")

    v1 = ["doc:0:one", "doc:1:one"]
    v2 = ["doc:0:two", "doc:1:two"]
    try:
        send("one", 0, v1, False)
        send("one", 1, v1, True)
        send("two", 0, v2, False)
        rag.app.flush()
        with worker_thread(rag.app, tasks=STAGES, concurrency=4):  # the three in one batch
            wait_until(lambda: drained(rag), 60, "the first batch done", interval=0.5)
            send("two", 1, v2, True)
            rag.app.flush()
            wait_until(lambda: drained(rag), 60, "the second batch done", interval=0.5)
        assert sorted(store.chunk_ids()) == v2
    finally:
        store.drop()
        store.close()
        rag.close()
        rag.app.close()


def test_search_refuses_a_k_below_one_on_every_store(kafka_url: str, redis_url: str, store_url: str, unique: str,
                                                      embedder: Embedder) -> None:
    """k = -1 gave 6 hits on the local store and Weaviate (their limit is k + 8, cut at k) and an SQL
    error on PostgreSQL for k = -10; a k below one is a ConfigError, k = 1 the best hit."""
    from taskq.errors import ConfigError

    rag = make_pipeline(kafka_url, redis_url, store_url, unique, embedder)
    store = open_store(store_url, embedder.dim, rag.settings.collection)
    try:
        store.upsert([Chunk(f"d:{i}:x", "d", i, f"text {i}", v, {}) for i, v in
                      enumerate(embedder.encode([f"text {i}" for i in range(12)]))])
        for k in (0, -1, -10):
            with pytest.raises(ConfigError, match="k must be"):
                rag.search("text 3", k=k)
        assert [h["chunk_id"] for h in rag.search("text 3", k=1)] == ["d:3:x"]
    finally:
        store.drop()
        store.close()
        rag.close()
        rag.app.close()
