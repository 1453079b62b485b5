"""``taskq bench embed``: batch 32 against batch 1, through the queue and in the model alone."""

from __future__ import annotations

from tasks.embedding import Embedder


def test_bench_embed_measures_batch_32_against_batch_1(embedder: Embedder) -> None:
    from benchmarks.embed import run_embed_bench

    result = run_embed_bench(32, embedder=embedder, rounds=1)  # raises if any embed task failed
    print(result)
    assert result["chunks"] == 32
    for name in ("queue_batch32", "queue_batch1", "model_batch32", "model_batch1"):
        assert result[f"{name}_chunks_per_s"] > 0
    # the model alone, same texts, same process: one call for 32 chunks beats 32 calls
    assert result["model_batch32_chunks_per_s"] > 1.5 * result["model_batch1_chunks_per_s"], result
