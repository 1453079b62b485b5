"""The RAG pipeline on an app configured from the environment (TASKQ_*, RAG_*), for worker processes.

``RAG_EMBED_DELAY`` (seconds) slows each embedding call, so that a test can kill a worker mid-run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from taskq import Taskq
from tasks.embedding import Embedder
from tasks.rag import Rag, RagSettings


class SlowEmbedder(Embedder):
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        time.sleep(float(os.environ.get("RAG_EMBED_DELAY", "0")))
        return super().encode(texts, batch_size)


app = Taskq("ragtest")
rag = Rag(app, RagSettings.from_env(), embedder=SlowEmbedder())
