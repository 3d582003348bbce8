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


def test_many_queries_at_once_rank_as_the_fts_macro_ranks_each(tmp_path):
    """`bm25_many` writes DuckDB FTS's `match_bm25` out over a table of queries; it must rank as the macro does."""
    queries = ["graph neural networks", "Language models: knowledge graphs?", "pasta", "the of and", "", "zz", "GRAPHS"]
    with Store.open(tmp_path / "s.duckdb") as store:
        index = CorpusIndex(store.con, DOCS, CountingEmbed())
        batched = index.bm25_many(queries, 3)
        one_by_one = [
            [doc_id for (doc_id,) in store.con.execute(
                "SELECT doc_id FROM (SELECT doc_id, fts_main_corpus.match_bm25(doc_id, ?) AS score FROM corpus) "
                "WHERE score IS NOT NULL ORDER BY score DESC, doc_id LIMIT 3", [query]).fetchall()]
            for query in queries
        ]  # fmt: skip
    assert batched == one_by_one and batched[2] == ["pasta"] and batched[3] == batched[4] == batched[5] == []
    assert batched[0][0] == "gnn" and set(batched[1][:2]) == {"kg", "gnn"}


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


def test_bf16_retrieval_vectors_stay_close_to_float32_in_a_table_of_their_own(tmp_path):
    """rewrite.dense_dtype: MiniLM under bf16 autocast gives vectors within a hundredth of cosine of float32's and
    the same ranking here; each precision keeps its own table, so a store never mixes the two."""
    from tasks.llm.embeddings import dense_index

    with Store.open(tmp_path / "s.duckdb") as store:
        exact = dense_index(store.con, DOCS, "float32")
        fast = dense_index(store.con, DOCS, "bfloat16")
        tables = {name for (name,) in store.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        queries = ["graph neural networks", "homemade pasta", "question answering with retrieval"]
        rankings = [index.search([[q] for q in queries], k=4) for index in (exact, fast)]
    assert (exact.table, fast.table) == ("corpus", "corpus_bfloat16") and {"corpus", "corpus_bfloat16"} <= tables
    assert 0.99 < np.sum(exact.vectors * fast.vectors, axis=1).min() and not np.array_equal(exact.vectors, fast.vectors)
    assert rankings[0] == rankings[1]
