"""The context stage's two queries: an item's content alone (no model, once per corpus) or its DMQR-RAG pool by the
turn's starting model (per turn, cached like every model call). Real packaged model, a dozen bundled arXiv items."""

import json

import pytest

from stores.store import Store
from tasks.ingest.ingest import ingest_semanlink
from tasks.runner import STAGES, run_stage


@pytest.fixture
def small_items(tiny_settings, tmp_path):
    records, _ = ingest_semanlink(200, 12)
    arxiv = [r for r in records if r["source"] == "semanlink-arxiv"][:8]
    fields = ("item_id", "reference", "fields", "tags")
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps({k: r[k] for k in fields}) for r in arxiv))
    return tiny_settings.model_copy(update={"data": tiny_settings.data.model_copy(update={"source": "items.jsonl"})})


def _with_query(settings, query: str):
    return settings.model_copy(update={"context": settings.context.model_copy(update={"query": query})})


def _contexts(settings, batch_id):
    with Store.open(settings.path("store")) as store:
        return store.read("contexts", batch_id).set_index("item_id")["related"].map(list).to_dict()


def test_dmqr_context_retrieves_with_the_champions_rewrites_once_per_turn(small_items):
    content, dmqr = _with_query(small_items, "content"), _with_query(small_items, "dmqr")
    assert not STAGES["context"].uses_model_in(content) and STAGES["context"].uses_model_in(dmqr)
    run_stage("ingest", content, 1)

    plain = run_stage("context", content, 1)
    assert plain.llm_calls == 0 and plain.metrics["rewrites_per_query"] == 0
    assert run_stage("context", content, 2).batch_id == plain.batch_id  # the content's context serves every turn

    pooled = run_stage("context", dmqr, 1)
    items = plain.rows_out
    assert pooled.llm_calls >= items + 1  # a selection per item, then at least one rewrite
    assert pooled.metrics["rewrites_per_query"] >= 0.5
    related, related_plain = _contexts(dmqr, pooled.batch_id), _contexts(content, plain.batch_id)
    assert related.keys() == related_plain.keys()
    assert all(len(docs) == small_items.context.docs and item not in docs for item, docs in related.items())
    assert related != related_plain  # the rewrites brought other documents for some item

    assert run_stage("context", dmqr, 1).cached
    next_turn = run_stage("context", dmqr, 2)  # the same champion: a batch of its own, every call from the cache
    assert next_turn.batch_id != pooled.batch_id and not next_turn.cached and next_turn.llm_calls == 0
    assert _contexts(dmqr, next_turn.batch_id) == related
