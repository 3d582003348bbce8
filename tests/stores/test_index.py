import numpy as np
import pandas as pd

from stores.index import CorpusIndex
from stores.store import Store

DOCS = pd.DataFrame(
    {
        "doc_id": ["gnn", "kg", "pasta", "rag"],
        "text": [
            "A practical guide to graph neural networks",
            "Language models are open knowledge graphs",
            "Cooking fresh pasta at home",
            "Retrieval augmented generation for question answering",
        ],
    }
)


class CountingEmbed:
    """Bag-of-letters vectors: deterministic and cheap; counts how many texts it embedded."""

    def __init__(self):
        self.texts = 0

    def __call__(self, texts):
        self.texts += len(texts)
        vectors = np.array([[t.lower().count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], dtype=float)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def test_bm25_finds_the_matching_document(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        index = CorpusIndex(store.con, DOCS, CountingEmbed())
        assert index.bm25("graph neural networks", 2)[0] == "gnn"
        assert index.bm25("pasta", 5) == ["pasta"]


def test_search_fuses_and_excludes_the_query_item(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        index = CorpusIndex(store.con, DOCS, CountingEmbed())
        [results] = index.search([["knowledge graphs from language models"]], k=2, exclude=["kg"])
    assert "kg" not in results and len(results) == 2


def test_only_new_or_changed_documents_are_embedded_again(tmp_path):
    embed = CountingEmbed()
    with Store.open(tmp_path / "s.duckdb") as store:
        CorpusIndex(store.con, DOCS, embed)
        assert embed.texts == 4
        CorpusIndex(store.con, DOCS, embed)
        assert embed.texts == 4
        changed = DOCS.copy()
        changed.loc[2, "text"] = "Baking bread at home"
        index = CorpusIndex(store.con, changed.iloc[1:], embed)
        assert embed.texts == 5
        assert index.doc_ids == ["kg", "pasta", "rag"]
        assert index.bm25("bread", 3) == ["pasta"]


def test_a_query_searched_again_is_embedded_once(tmp_path):
    embed = CountingEmbed()
    with Store.open(tmp_path / "s.duckdb") as store:
        index = CorpusIndex(store.con, DOCS, embed)
        before = embed.texts
        first = index.search([["pasta at home"], ["pasta at home", "graph networks"]], k=2)
        again = index.search([["graph networks", "pasta at home"]], k=2)
    assert embed.texts - before == 2  # two distinct queries over both calls
    assert first[0][0] == "pasta" and len(again[0]) == 2
