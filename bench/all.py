"""`make bench`: the performance suite in one command. Each benchmark runs in a process of its own (so its timings
and peak memory are its own), prints its table and writes bench/results/<name>.json; this script then prints the
headline figures side by side against their goals and writes bench/results/summary.json. Every ratio is against a
baseline measured in the same run.

The default engine only (transformers, in process): the vLLM server's start-up alone is 75-105 s here, and its two
benchmarks took 390 s of the 1350 s the whole suite took on this 2-core CPU, against a 15-minute goal. `--vllm`
(`make bench-vllm`) adds them: generation and scoring through the server, and a turn on it next to the in-process one.

Run: .venv/bin/python bench/all.py [--skip NAME ...] [--vllm]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.roofline import limit_gflop_s  # noqa: E402

RESULTS = REPO / "bench" / "results"
BENCHES = {
    "roofline": ["bench/roofline.py"],
    "generation": ["bench/generation.py"],
    # Both turns without the context stage: its corpus embedding (65 s here) is the same whichever engine runs, and
    # the rewrite stage still builds the corpus index (it needs it), so the turns stay comparable stage by stage.
    "turn-transformers": ["bench/turn.py", "--backend", "transformers", "--context-docs", "0"],
    "turn-vllm": ["bench/turn.py", "--backend", "vllm", "--context-docs", "0"],  # with --vllm only
    "dpo": ["bench/dpo.py"],
    "training": ["bench/training.py"],
    "scale": ["bench/scale.py"],
    "retrieval_speed": ["bench/retrieval_speed.py"],
}


def headlines(results: dict) -> list[tuple[str, str, str]]:
    """(figure, measured, goal) rows from the benchmarks' JSON."""
    rows = []
    if "roofline" in results:
        roof = results["roofline"]
        for dtype, by_rows in roof["model_weighted_gflop_s"].items():
            rates = ", ".join(f"{rate:.0f} at {n} rows" for n, rate in by_rows.items())
            rows.append((f"limit: {dtype} matmul GFLOP/s at the model's shapes ({roof['threads']} threads)", rates,
                         "measured"))  # fmt: skip
        floors = ", ".join(f"{d} {v:.0f} tok/s" for d, v in roof["decode_floor_tok_s"].items())
        rows.append(("limit: memory bandwidth; batch-1 decode floor", f"{roof['bandwidth_gb_s']:.1f} GB/s; {floors}",
                     "measured"))  # fmt: skip
    if {"roofline", "generation"} <= results.keys():
        limit, dtype = limit_gflop_s(results["roofline"])
        paths = [row["path"] for row in results["generation"]["generation"]]
        # the turn's engine: bf16 batches where the CPU has bf16 units (`model.dtype: auto`), float32 elsewhere
        default = next((p for p in paths if p.startswith("transformers batched bf16 (")), None) or next(
            (p for p in paths if p.startswith("transformers batched (")), None
        )
        for kind, key in (("generation", "generation"), ("scoring", "scoring")):
            for row in results["generation"][key]:
                default_path = kind == "generation" and row["path"] == default
                figure = f"{kind} {row['path']}: share of the matmul limit ({limit:.0f} GFLOP/s {dtype}, 512 rows)"
                measured = f"{row['gflop_s'] / limit:.0%} ({row['gflop_s']:.0f} GFLOP/s)"
                rows.append((figure, measured, ">= 50%" if default_path else "reported"))
    if {"roofline", "training"} <= results.keys():
        measured_rows = max(
            int(n) for by_rows in results["roofline"]["model_weighted_gflop_s"].values() for n in by_rows
        )
        limit, dtype = limit_gflop_s(results["roofline"], measured_rows)  # 2048 rows in make bench: a training batch
        for row in results["training"]["rows"]:
            figure = f"SFT step, {row['row']} row: share of the matmul limit ({limit:.0f} GFLOP/s {dtype}, "
            figure += f"{measured_rows} rows)"
            measured = f"{row['gflop_s'] / limit:.0%} ({row['gflop_s']:.0f} GFLOP/s, {row['s_per_step']:.1f} s/step)"
            rows.append((figure, measured, ">= 40%" if row["row"] == "default" else "reported"))
    if "generation" in results:
        # best-of-n: the shared-prefill row (the line's-end row, fewer tokens for the same captions, has its own)
        gen = {r["path"].split(" (")[0]: r for r in results["generation"]["generation"] if "same_captions" not in r}
        for path, row in gen.items():
            if path.startswith("naive") or path == "transformers batched":  # the baselines
                continue
            rows.append(
                (f"{path}: tok/s vs naive loop", f"{row['vs_naive']:.1f}x ({row['tok_s']:.0f} tok/s)", ">= 15x")
            )
            rows.append((f"{path}: tok/s vs batched transformers", f"{row['vs_batched']:.2f}x", ">= 3x"))
            if row.get("start_s"):
                naive = next(r for p, r in gen.items() if p.startswith("naive"))
                ratio = row["tok_s_with_start"] / naive["tok_s"]
                rows.append((f"{path} incl. {row['start_s']:.0f} s start-up, vs naive", f"{ratio:.1f}x", "reported"))
        for row in results["generation"]["scoring"][1:]:
            rows.append((f"scoring {row['path']}: seq/s vs one at a time", f"{row['vs_single']:.1f}x", "reported"))
        for key, value in results["generation"].get("agreement", {}).items():
            rows.append((f"vs float32 transformers: {key}", f"{value:.3f}", "reported"))
        if line_end := results["generation"].get("line_end"):
            measured = f"{line_end['speedup']:.2f}x ({line_end['tokens_saved']:.0%} fewer tokens, "
            measured += f"{line_end['same_captions']:.0%} same captions)"
            rows.append(("best-of-n stopped at the line's end vs whole completions: time", measured, "reported"))
    turns = {name.removeprefix("turn-"): results[name] for name in results if name.startswith("turn-")}
    for engine, turn in turns.items():
        rows.append((f"rerun of a finished turn vs cold ({engine})", f"{turn['speedup']:.0f}x", ">= 50x"))
        rows.append((f"model calls on rerun ({engine})", str(turn["rerun_llm_calls"]), "0"))
        rows.append((f"peak RSS, turn of {turn['train_items']} items ({engine}; the process tree)",
                     f"{turn['peak_rss_gib']:.2f} GiB", "<= 8 GiB"))  # fmt: skip
    if {"transformers", "vllm"} <= turns.keys():
        fast, slow = turns["vllm"], turns["transformers"]
        model_stages = [r["stage"] for r in slow["stages"] if r["cold_llm_calls"]]
        seconds = {e: sum(r["cold_s"] for r in t["stages"] if r["stage"] in model_stages) for e, t in turns.items()}
        rows.append((f"stages that call the model ({', '.join(model_stages)}): vLLM (incl. "
                     f"{fast['engine_start_s']:.0f} s start-up, {fast['weight_reloads']} weight reloads) vs "
                     "transformers bf16", f"{seconds['transformers'] / seconds['vllm']:.2f}x "
                     f"({seconds['vllm']:.0f} s vs {seconds['transformers']:.0f} s)", "reported"))  # fmt: skip
    if "dpo" in results:
        for row in results["dpo"]["rows"]:
            if row["precomputed"]:
                rows.append((f"DPO round, {row['epochs']} visit(s) per pair: reference log-probs precomputed vs "
                             "on the fly", f"{row['vs_on_the_fly']:.2f}x", "reported"))  # fmt: skip
    if "scale" in results:
        largest = results["scale"]["rows"][-1]
        for part in ("ingest", "lineage_query", "fusion"):
            ratio = f"{largest[f'{part}_per_item_ratio']:.2f}x"
            rows.append((f"{part} per-item time at {largest['items']:,} vs 10x fewer", ratio, "<= 1.2x"))
        rows.append(("DuckDB insert rows/s", f"{largest['insert_rows_s']:,.0f}", ">= 100,000"))
    if "retrieval_speed" in results:
        speed = {r["what"]: r for r in results["retrieval_speed"]["rows"]}
        bm25, macro = speed["BM25"], speed["BM25, the FTS macro per query"]
        rows.append(
            (
                "BM25 queries/s, one statement for all",
                f"{bm25['qps']:.0f} ({bm25['qps'] / macro['qps']:.0f}x the FTS macro per query)",
                "reported",
            )
        )
        exact, fast = speed["dense float32 (embed + search)"], speed["dense bfloat16 (embed + search)"]
        rows.append(("dense queries/s (embedding included), float32", f"{exact['qps']:.0f}", "reported"))
        rows.append(
            ("dense queries/s, bf16 autocast (rewrite.dense_dtype auto here)",
             f"{fast['qps']:.0f} ({fast['qps'] / exact['qps']:.2f}x; {fast['top_k_kept']:.1%} of float32's top k)",
             "reported")
        )  # fmt: skip
        adaptive, every = speed["DMQR adaptive"], speed["DMQR all four"]
        rows.append(
            ("DMQR adaptive vs all four: s/query", f"{adaptive['s_per_query'] / every['s_per_query']:.2f}x "
             f"({adaptive['rewrites_per_query']:.2f} vs {every['rewrites_per_query']:.0f} rewrites)", "reported")
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=list(BENCHES))
    parser.add_argument("--vllm", action="store_true", help="also the vLLM server: its generation rows, its turn")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    started, results, seconds = time.perf_counter(), {}, {}
    for name, command in BENCHES.items():
        if name == "turn-vllm" and not args.vllm:  # not even an earlier run's: its ratios are against this run
            continue
        if name in args.skip:
            if (RESULTS / f"{name}.json").exists():  # shown, marked as from an earlier run
                results[name] = json.loads((RESULTS / f"{name}.json").read_text())
                seconds[name] = "earlier run"
            continue
        extra = ["--no-vllm"] if name == "generation" and not args.vllm else []
        began = time.perf_counter()
        subprocess.run([sys.executable, *command, *extra], cwd=REPO, check=True)
        seconds[name] = time.perf_counter() - began
        results[name] = json.loads((RESULTS / f"{name}.json").read_text())
    table = Table(title=f"flywheel performance suite ({time.perf_counter() - started:.0f} s: {seconds})")
    for column in ("figure", "measured", "goal"):
        table.add_column(column)
    rows = headlines(results)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
    summary = {"seconds": seconds, "headlines": [dict(zip(("figure", "measured", "goal"), r)) for r in rows]}
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
