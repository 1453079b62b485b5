"""Fixtures of the RAG tests: the real embedding model (loaded once per run), the shipped corpus and
its questions, and a vector store URL parametrised over the local store, Weaviate and pgvector."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.embedding import Embedder, chunk_id

DATA = Path(__file__).resolve().parent.parent / "data"
STORES = ("local", "weaviate", "pgvector")


@dataclass(frozen=True)
class Doc:
    doc_id: str
    text: str
    metadata: dict[str, str]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded once for the whole run."""
    try:
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        message = f"the RAG tests need the rag extra (pip install -e '.[rag]'): {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    embedder = Embedder()
    embedder.model  # noqa: B018 - load now, not inside the first test's timing
    return embedder


@pytest.fixture(scope="session")
def corpus() -> list[Doc]:
    """The twelve short documents shipped in tests/data/corpus."""
    docs = []
    for path in sorted((DATA / "corpus").glob("*.md")):
        text = path.read_text()
        docs.append(Doc(path.stem, text, {"source": path.name, "title": text.splitlines()[0].lstrip("# ")}))
    assert len(docs) >= 12
    return docs


@pytest.fixture(scope="session")
def questions() -> list[dict[str, str]]:
    """Questions (``q``) and the document (``doc``) that answers each."""
    items = json.loads((DATA / "questions.json").read_text())
    assert len(items) >= 10
    return items


def expected_ids(embedder: Embedder, docs: list[Doc], size: int = 512, overlap: int = 64) -> dict[str, set[str]]:
    """Chunk ids each document should end up with."""
    return {d.doc_id: {chunk_id(d.doc_id, p.position, p.text) for p in embedder.split(d.text, size, overlap)}
            for d in docs}


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A vector store URL: the local SQLite store, Weaviate, or PostgreSQL with pgvector."""
    if request.param == "local":
        yield f"local://{tmp_path / 'chunks.db'}"
    elif request.param == "weaviate":
        yield request.getfixturevalue("weaviate_url")
    else:
        yield request.getfixturevalue("postgres_url")
