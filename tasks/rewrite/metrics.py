"""Retrieval metrics for one query (averaged over queries by the caller), as BEIR and the DMQR-RAG paper report
them: P@5, Hit@5, Recall@10, nDCG@10 (graded relevance from the qrels, log2 discount) and MRR@10."""

from __future__ import annotations

import math


def precision_at(retrieved: list[str], relevant: dict[str, int], k: int) -> float:
    return sum(1 for d in retrieved[:k] if relevant.get(d, 0) > 0) / k


def hit_at(retrieved: list[str], relevant: dict[str, int], k: int) -> float:
    return float(any(relevant.get(d, 0) > 0 for d in retrieved[:k]))


def recall_at(retrieved: list[str], relevant: dict[str, int], k: int) -> float:
    wanted = sum(1 for grade in relevant.values() if grade > 0)
    return sum(1 for d in retrieved[:k] if relevant.get(d, 0) > 0) / wanted if wanted else 0.0


def ndcg_at(retrieved: list[str], relevant: dict[str, int], k: int) -> float:
    dcg = sum(relevant.get(d, 0) / math.log2(rank + 1) for rank, d in enumerate(retrieved[:k], start=1))
    ideal = sorted((grade for grade in relevant.values() if grade > 0), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 1) for rank, grade in enumerate(ideal, start=1))
    return dcg / idcg if idcg else 0.0


def mrr_at(retrieved: list[str], relevant: dict[str, int], k: int) -> float:
    return next((1.0 / rank for rank, d in enumerate(retrieved[:k], start=1) if relevant.get(d, 0) > 0), 0.0)


def query_metrics(retrieved: list[str], relevant: dict[str, int]) -> dict[str, float]:
    return {
        "p@5": precision_at(retrieved, relevant, 5),
        "hit@5": hit_at(retrieved, relevant, 5),
        "recall@10": recall_at(retrieved, relevant, 10),
        "ndcg@10": ndcg_at(retrieved, relevant, 10),
        "mrr@10": mrr_at(retrieved, relevant, 10),
    }
