"""A ``kill -9`` of the embed worker mid-run: every chunk still ends up stored exactly once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from taskq import Taskq
from tasks.embedding import Embedder
from tasks.rag import Rag, RagSettings
from tasks.vectorstores import open_store
from tests.rag.conftest import Doc, expected_ids
from tests.support import ROOT, WorkerProcess, env_for, wait_until, worker_thread

LIGHT_STAGES = ["tasks.rag.ingest_document", "tasks.rag.chunk", "tasks.rag.upsert"]


def test_kill_9_of_the_embed_worker_mid_run_stores_every_chunk_once(
        kafka_url: str, redis_url: str, postgres_url: str, unique: str, embedder: Embedder,
        corpus: list[Doc]) -> None:
    prefix = f"rk{unique}"
    collection = f"kill_{unique}"
    env = {**env_for(kafka_url, redis_url, prefix), "RAG_STORE": postgres_url, "RAG_COLLECTION": collection,
           "RAG_CHUNK_TOKENS": "24", "RAG_CHUNK_OVERLAP": "4", "RAG_EMBED_DELAY": "0.3", "HF_HUB_OFFLINE": "1"}
    app = Taskq("ragtest", broker=kafka_url, backend=redis_url, topic_prefix=f"{prefix}.", group=f"{prefix}.group")
    rag = Rag(app, RagSettings(store_url=postgres_url, collection=collection, chunk_tokens=24, chunk_overlap=4),
              embedder=embedder)
    expected = set().union(*expected_ids(embedder, corpus, 24, 4).values())
    total = len(expected)
    assert total >= 60
    store = open_store(postgres_url, embedder.dim, collection)
    # the embed pool as deployed (--profile embed: 32 per batch), in threads so that one process holds it
    # all, and with batches of 8 so that the run spans several batches
    embed_args = ("--profile", "embed", "--pool", "threads", "-c", "1", "--task-batch-size", "8")
    first = WorkerProcess("tests.apps.ragapp", env, *embed_args, name="embed1")
    second = None
    try:
        with worker_thread(app, tasks=LIGHT_STAGES, concurrency=4):
            for d in corpus:
                rag.ingest(d.doc_id, d.text, d.metadata)
            app.flush()
            wait_until(lambda: store.count() >= 8, 180, "the first embedded batches stored")
            first.kill()  # SIGKILL, mid-run
            at_kill = store.count()
            assert at_kill < total, "the embed worker finished before it could be killed: nothing was tested"
            # with no embed worker left, the group's lag on the embed topic is what KEDA would scale on
            wait_until(lambda: _end(kafka_url, rag.embed.topic) == total, 60, "every embed message sent")
            keda = _keda_lag(kafka_url, f"{prefix}.group", rag.embed.topic)
            out = subprocess.run([sys.executable, "-m", "taskq.cli", "lag", "--json", "--group", f"{prefix}.group"],
                                 cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                                 timeout=120, check=True).stdout
            assert json.loads(out)["topics"][rag.embed.topic] == keda > 0
            second = WorkerProcess("tests.apps.ragapp", env, *embed_args, name="embed2")
            wait_until(lambda: store.count() >= total, 180, "every chunk stored after the restart")
            wait_until(lambda: second.proc.poll() is None and "stopped" not in second.log, 5, "embed2 alive")
            assert second.terminate(60) == 0
            ids = store.chunk_ids()
            assert len(ids) == len(set(ids)) == total, "each chunk stored exactly once"
            assert set(ids) == expected
            redone = int(re.search(r"succeeded=(\d+)", second.log).group(1))  # type: ignore[union-attr]
            assert redone >= total - at_kill, (redone, total, at_kill)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        store.drop()
        store.close()
        rag.close()
        app.close()


def _end(kafka_url: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": kafka_url.removeprefix("kafka://"), "group.id": "lag-probe"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def _keda_lag(kafka_url: str, group: str, topic: str) -> int:
    """KEDA's Kafka scaler's number: per partition, latest offset - committed offset (the latest offset
    when nothing is committed, with offsetResetPolicy earliest), summed."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": kafka_url.removeprefix("kafka://"), "group.id": group,
                  "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        committed = {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
        total = 0
        for tp in parts:
            high = c.get_watermark_offsets(tp, timeout=10)[1]
            total += high - committed[tp.partition] if committed[tp.partition] >= 0 else high
        return total
    finally:
        c.close()
