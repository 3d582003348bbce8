"""How the stages that need no model scale: the real `ingest` stage (JSONL parse, pydantic checks, duplicate-id and
bad-line quarantine, split assignment, Great Expectations validation, DuckDB write with lineage, Parquet export),
reciprocal rank fusion, lineage queries, and raw DuckDB insert speed, at 1k, 10k and 100k synthetic items (no model
runs, so synthetic sizes are fair). Per-item time at each size is compared with the size before it (x10 items):
linear scaling keeps the ratio at or under 1.0 (fixed costs amortise), the target is at most 1.2.

Run: .venv/bin/python bench/scale.py [--sizes 1000 10000 100000]
Prints a table, writes bench/results/scale.json and logs to the MLflow experiment flywheel-bench.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("FLYWHEEL_PROGRESS", "0")

import stores  # noqa: E402,F401
from bench.common import log_bench_run, project_settings  # noqa: E402

WORDS = "retrieval dense sparse graph neural language model embedding transformer attention token query".split()


def write_items(path: Path, count: int, seed: int) -> None:
    """`count` item lines in the item schema; 2% repeat an earlier id and 1% are broken JSON (quarantined)."""
    rng = random.Random(seed)
    with open(path, "w") as out:
        for number in range(count):
            if number and rng.random() < 0.01:
                out.write('{"item_id": "broken\n')
                continue
            item_id = f"it-{rng.randrange(number)}" if number and rng.random() < 0.02 else f"it-{number}"
            words = rng.choices(WORDS, k=60)
            fields = {"abstract": " ".join(words), "comment": ""}  # every field the caption task names
            item = {"item_id": item_id, "reference": " ".join(words[:8]), "fields": fields, "tags": words[:3]}
            out.write(json.dumps(item) + "\n")


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(work: Path, size: int) -> dict:
    import numpy as np
    import pandas as pd

    from stores.index import reciprocal_rank_fusion
    from stores.schema import Column, TableSpec
    from stores.store import Lineage, Store
    from tasks.runner import run_stage

    folder = work / f"n{size}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_items(folder / "items.jsonl", size, seed=size)
    settings = project_settings(folder, "scale", {"data": {"source": "items.jsonl"}})
    row = {"items": size, "ingest_s": timed(lambda: run_stage("ingest", settings, 1))}
    with Store.open(settings.path("store")) as store:
        row["quarantined"] = store.count("quarantine")
        batch = store.con.execute("SELECT batch_id FROM stage_runs WHERE stage = 'ingest'").fetchone()[0]
        row["lineage_query_s"] = timed(  # every item traced to the stage run, model and params that wrote it
            lambda: store.con.execute(
                "SELECT r.stage, r.model_version, r.params_hash, i.split, count(*) FROM items i "
                "JOIN stage_runs r USING (batch_id) WHERE i.batch_id = ? GROUP BY ALL",
                [batch],
            ).fetchall()
        )
        spec = TableSpec("bench_rows", (Column("item_id", "VARCHAR"), Column("score", "DOUBLE")), key=("item_id",))
        frame = pd.DataFrame(
            {"item_id": [f"r-{i}" for i in range(size)], "score": np.random.default_rng(0).random(size)}
        )
        lineage = Lineage("bench", "none", "bench", "bench", "b1")
        row["insert_s"] = timed(lambda: store.insert(spec, frame, lineage))
    rng = random.Random(size)
    rankings = [[f"d{rng.randrange(size)}" for _ in range(10)] for _ in range(size)]
    row["fusion_s"] = timed(lambda: [reciprocal_rank_fusion(rankings[i : i + 4]) for i in range(0, size, 4)])
    row["insert_rows_s"] = size / row["insert_s"]
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "scale")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    rows = [measure(args.work, size) for size in sorted(args.sizes)]
    timed_parts = ("ingest_s", "lineage_query_s", "insert_s", "fusion_s")
    ratio_parts = ("ingest_s", "lineage_query_s", "fusion_s")
    table = Table(title="Non-model stages at scale (per-item time vs the previous size; linear <= 1.0)")
    for column in ("items", "quarantined", *timed_parts, "ingest x", "lineage x", "fusion x", "insert rows/s"):
        table.add_column(column, justify="right")
    for previous, row in zip([None, *rows], rows):
        for part in ratio_parts:
            ratio = (row[part] / row["items"]) / (previous[part] / previous["items"]) if previous else 1.0
            row[part.replace("_s", "_per_item_ratio")] = ratio
        table.add_row(
            f"{row['items']:,}", str(row["quarantined"]), *(f"{row[p]:.3f}" for p in timed_parts),
            *(f"{row[p.replace('_s', '_per_item_ratio')]:.2f}" for p in ratio_parts), f"{row['insert_rows_s']:,.0f}",
        )  # fmt: skip
    Console(width=150).print(table)
    result = {"rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    largest = rows[-1]
    metrics = {f"{k}_n{largest['items']}": v for k, v in largest.items() if isinstance(v, float)}
    log_bench_run("scale", {"sizes": args.sizes}, metrics, args.out, args.mlflow_dir)
    return result


if __name__ == "__main__":
    main()
