"""Retrieved context for prompts: for every item, the titles of its `context.docs` most related documents in the
corpus (the non-held-out items, the item itself excluded), BM25 + dense retrieval of its content, fused. Caption
prompts show them as "Related bookmarks" (tasks/prompts.py), so annotation, response generation, training and the
held-out evaluation all read the same context, and better retrieval can show up in the scoreboard.

The query is the item's own content (no model call): context is computed once per corpus and params, for all
items, before the turn's model stages. `context.docs: 0` switches it off (empty context, prompts as without it).

Input: `items`. Output columns (`contexts`): item_id, related (doc ids, best first), related_titles.
"""

from __future__ import annotations

import pandas as pd

from stores.schema import Column, TableSpec
from tasks.prompts import clip, item_content
from tasks.rewrite.rewrite import corpus_index
from tasks.stage import StageContext, StageDef, StageOutput

CONTEXTS = TableSpec(
    "contexts",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("related", "VARCHAR[]"),
        Column("related_titles", "VARCHAR[]"),
    ),
    key=("item_id",),
)


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.settings.context
    items = ctx.read("ingest", "items")
    ids = list(items["item_id"])
    if cfg.docs:
        index = corpus_index(ctx)
        queries = [[clip(item_content(item), ctx.settings.data.max_signal_chars)] for item in items.to_dict("records")]
        related = index.search(queries, cfg.docs, cfg.rrf_k, exclude=ids, fusion=cfg.fusion)
    else:
        related = [[] for _ in ids]
    titles = dict(zip(items["item_id"], items["title"]))
    contexts = pd.DataFrame(
        {"item_id": ids, "related": related, "related_titles": [[titles[d] for d in docs] for docs in related]}
    )
    metrics = {"items": len(ids), "docs_per_item": float(cfg.docs)}
    return StageOutput({"contexts": contexts}, rows_in=len(ids), metrics=metrics)


STAGE = StageDef(
    name="context",
    outputs=(CONTEXTS,),
    upstream=("ingest",),
    sections=("data", "context"),
    run=run,
    uses_model=False,
    per_turn=False,
)
