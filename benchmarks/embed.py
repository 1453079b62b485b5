"""``taskq bench embed``: embedding throughput (chunks/s) through the queue, batch 32 against batch 1.

Both runs send the same chunks to the RAG pipeline's ``embed`` task and time one worker (threads
pool, one slot, the model loaded before the clock starts) from its start to the last stored result;
the worker's batch size is the only difference. The two take turns and each keeps its best run. The model alone (``encode`` of the same texts, 32
at a time and one at a time) is measured beside it, so the queue's share is visible.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "corpus"


def chunk_texts(embedder: Any, count: int, tokens: int = 64) -> list[tuple[str, str]]:
    """``count`` (doc_id, text) chunks of about ``tokens`` tokens cut from the shipped corpus."""
    pieces = [(path.stem, p.text) for path in sorted(CORPUS.glob("*.md"))
              for p in embedder.split(path.read_text(), tokens, 0)]
    return [(f"{pieces[i % len(pieces)][0]}-{i // len(pieces)}", pieces[i % len(pieces)][1]) for i in range(count)]


def _through_queue(embedder: Any, chunks: list[tuple[str, str]], batch: int, broker: str | None,
                   backend: str | None, workdir: Path) -> float:
    """Seconds for one worker to embed every chunk with ``batch`` records per call."""
    from taskq import Taskq
    from taskq.worker import Worker
    from tasks.rag import Rag, RagSettings

    run = uuid.uuid4().hex[:8]
    app = Taskq(f"benchembed{run}", broker=broker, backend=backend, topic_prefix=f"bench{run}.",
                local_path=str(workdir / f"{run}.db"), default_partitions=1)
    rag = Rag(app, RagSettings(store_url=f"local://{workdir / 'chunks.db'}", collection=f"b{run}"),
              embedder=embedder)
    sent = [rag.embed.apply_async(kwargs={"doc_id": doc, "keep": None, "chunk": {
        "chunk_id": f"{doc}:0:x", "position": 0, "text": text, "metadata": {}}}, key=doc) for doc, text in chunks]
    app.flush()
    ids = [r.id for r in sent]
    worker = Worker(app, [rag.embed.name], concurrency=1, task_batch_size=batch, task_batch_wait=0.01,
                    forward_delayed=False)
    import threading

    started = time.perf_counter()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        while True:
            stored = app.backend.get_many(ids)
            if all(r is not None and r.ready for r in stored):
                break
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"embedding {len(ids)} chunks at batch {batch} took over 600 s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
        thread.join(60)
        rag.close()
        app.close()
    failed = [r.error for r in stored if r is not None and r.status != "SUCCESS"]
    if failed:
        raise RuntimeError(f"{len(failed)} embed tasks failed, first: {failed[0]}")
    return elapsed


def run_embed_bench(count: int = 320, embedder: Any = None, broker: str | None = None,
                    backend: str | None = None, rounds: int = 2) -> dict[str, Any]:
    """Chunks/s at batch 32 and batch 1, through the queue and in the model alone.

    After a warm-up, the two batch sizes take turns ``rounds`` times and each keeps its best run, so a
    burst of load from elsewhere on the machine does not decide the comparison.
    """
    from tasks.embedding import Embedder

    embedder = embedder or Embedder()
    embedder.model  # noqa: B018 - loaded before any clock starts
    chunks = chunk_texts(embedder, count)
    texts = [t for _, t in chunks]

    def model_run(batch: int) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            embedder.encode(texts[i:i + batch], batch_size=batch)
        return time.perf_counter() - t0

    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="taskq-bench-embed-") as tmp:
        _through_queue(embedder, chunks[:8], 4, broker, backend, Path(tmp))  # warm-up: broker, topics, model
        embedder.encode(texts[:32], batch_size=32)
        for _ in range(rounds):
            for batch in (32, 1):
                runs = {f"queue_{batch}": _through_queue(embedder, chunks, batch, broker, backend, Path(tmp)),
                        f"model_{batch}": model_run(batch)}
                for name, seconds in runs.items():
                    best[name] = min(best.get(name, seconds), seconds)
    return {
        "chunks": count, "broker": broker or "local (embedded)", "rounds": rounds,
        "queue_batch32_chunks_per_s": round(count / best["queue_32"], 1),
        "queue_batch1_chunks_per_s": round(count / best["queue_1"], 1),
        "queue_speedup": round(best["queue_1"] / best["queue_32"], 2),
        "model_batch32_chunks_per_s": round(count / best["model_32"], 1),
        "model_batch1_chunks_per_s": round(count / best["model_1"], 1),
        "model_speedup": round(best["model_1"] / best["model_32"], 2),
    }


@click.command("embed")
@click.option("-n", "--chunks", "count", default=320, show_default=True, help="Chunks to embed per run.")
@click.option("--broker", default=None, help="Broker URL (default: TASKQ_BROKER_URL, else the embedded one).")
@click.option("--backend", default=None, help="Result backend URL (default: TASKQ_RESULT_BACKEND).")
@click.option("--rounds", default=2, show_default=True, help="Turns each batch size takes (best kept).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def embed_command(count: int, broker: str | None, backend: str | None, rounds: int, as_json: bool) -> None:
    """Embedding throughput through the queue: batch 32 against batch 1 (needs the rag extra)."""
    result = run_embed_bench(count, broker=broker, backend=backend, rounds=rounds)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{count} chunks of ~64 tokens, all-MiniLM-L6-v2 on CPU, one worker, broker {result['broker']}")
    click.echo(f"  through the queue: batch 32 {result['queue_batch32_chunks_per_s']:>8} chunks/s   "
               f"batch 1 {result['queue_batch1_chunks_per_s']:>8} chunks/s   x{result['queue_speedup']}")
    click.echo(f"  model alone:       batch 32 {result['model_batch32_chunks_per_s']:>8} chunks/s   "
               f"batch 1 {result['model_batch1_chunks_per_s']:>8} chunks/s   x{result['model_speedup']}")
