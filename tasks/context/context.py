"""Retrieved context for prompts: for every item, the references (titles) of its `context.docs` most related items in
the corpus (the non-held-out items, the item itself excluded), BM25 + dense retrieval of its content, fused. Caption
prompts show them as "Related bookmarks" (tasks/prompts.py), so annotation, response generation, training and the
held-out evaluation all read the same context, and better retrieval can show up in the scoreboard.

The query is the item's own content (`context.query: content`, no model call: computed once per corpus and params,
for all items, before the turn's model stages) or, with `context.query: dmqr`, its DMQR-RAG pool: the content plus
the rewrites the turn's starting model selects and writes for it (`rewrite.strategies`, `adaptive`, `sampling`,
`max_query_chars`), each ranking `rewrite.fusion_depth` deep, fused. Then the stage is per turn (its pools depend on
the champion), so a rewriter that retrieves better gives every later stage better context. `context.docs: 0`
switches context off (empty context, prompts as without it).

Input: `items`. Output columns (`contexts`): item_id, related (doc ids, best first), related_titles.
"""

from __future__ import annotations

import pandas as pd

from stores.schema import Column, TableSpec
from tasks.config import Settings
from tasks.prompts import clip, item_content
from tasks.rewrite.dmqr import build_pools
from tasks.rewrite.rewrite import corpus_index
from tasks.stage import StageContext, StageDef, StageOutput, with_fields

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
    items = with_fields(ctx.read("ingest", "items"))
    ids = list(items["item_id"])
    related, rewrites = [[] for _ in ids], 0.0
    if cfg.docs:
        pools, depth = query_pools(ctx, [item_content(item, ctx.settings.task) for item in items.to_dict("records")])
        related = corpus_index(ctx).search(pools, cfg.docs, cfg.rrf_k, exclude=ids, fusion=cfg.fusion, depth=depth)
        rewrites = sum(len(pool) - 1 for pool in pools) / max(len(pools), 1)
    titles = dict(zip(items["item_id"], items["reference"]))
    contexts = pd.DataFrame(
        {"item_id": ids, "related": related, "related_titles": [[titles[d] for d in docs] for docs in related]}
    )
    metrics = {"items": len(ids), "docs_per_item": float(cfg.docs), "rewrites_per_query": rewrites}
    return StageOutput({"contexts": contexts}, rows_in=len(ids), metrics=metrics)


def query_pools(ctx: StageContext, contents: list[str]) -> tuple[list[list[str]], int | None]:
    """Each item's queries, its content first, and how deep each ranking goes: the content alone k + 1 deep (the
    item itself is left out), or with the DMQR rewrites `rewrite.fusion_depth` deep, so rewrites can add documents."""
    own = [clip(content, ctx.settings.task.max_field_chars) for content in contents]
    if not rewrites_the_query(ctx.settings):
        return [[query] for query in own], None
    cfg = ctx.settings.rewrite
    clipped = [clip(content, cfg.max_query_chars) for content in contents]
    dmqr = build_pools(clipped, ctx.llm, list(cfg.strategies), cfg.adaptive, cfg.sampling, cfg.max_query_chars)
    return [list(dict.fromkeys([query, *pool.queries[1:]])) for query, pool in zip(own, dmqr)], cfg.fusion_depth


def rewrites_the_query(settings: Settings) -> bool:
    return bool(settings.context.docs) and settings.context.query == "dmqr"


STAGE = StageDef(
    name="context",
    outputs=(CONTEXTS,),
    upstream=("ingest",),
    sections=(
        "data",
        "context",
        "task.content",
        "task.max_field_chars",
        *(
            f"rewrite.{k}"
            for k in ("strategies", "adaptive", "sampling", "max_query_chars", "fusion_depth", "dense_dtype")
        ),
    ),
    run=run,
    uses_model=False,
    per_turn=False,
    model_when=rewrites_the_query,
)
