"""The RAG pipeline on real Kafka and Redis, into each real vector store, with the real model."""

from __future__ import annotations

from typing import Any

from taskq import Taskq
from tasks.embedding import Embedder
from tasks.rag import Rag, RagSettings
from tasks.vectorstores import open_store
from tests.rag.conftest import Doc, expected_ids
from tests.support import wait_results, wait_until, worker_thread

STAGES = ["tasks.rag.ingest_document", "tasks.rag.chunk", "tasks.rag.embed", "tasks.rag.upsert"]


def make_pipeline(kafka_url: str, redis_url: str, store_url: str, unique: str, embedder: Embedder,
                  **settings: Any) -> Rag:
    app = Taskq(f"rag{unique}", broker=kafka_url, backend=redis_url, topic_prefix=f"rag{unique}.",
                default_partitions=3)
    return Rag(app, RagSettings(store_url=store_url, collection=f"chunks_{unique}", **settings), embedder=embedder)


def end_offsets(rag: Rag, topic: str) -> int:
    consumer = rag.app.broker
    return sum(high for _, high in consumer.watermarks(topic).values()) if hasattr(consumer, "watermarks") else -1


def test_pipeline_finds_the_right_document_on_every_store(
        kafka_url: str, redis_url: str, store_url: str, unique: str, embedder: Embedder, corpus: list[Doc],
        questions: list[dict[str, str]]) -> None:
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
            embeds_before = end_offsets(rag, rag.embed.topic)
            snapshot = sorted(store.chunk_ids())
            again = [rag.ingest(d.doc_id, d.text, d.metadata) for d in corpus]
            second = wait_results(rag.app, [r.get(timeout=60)["chunk_task"] for r in again], 60)
            assert all(r is not None and r.result["unchanged"] is True for r in second)
            assert end_offsets(rag, rag.embed.topic) == embeds_before, "no embed message for an unchanged document"
            assert sorted(store.chunk_ids()) == snapshot

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
