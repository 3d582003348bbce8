"""SFT throughput against the machine's limit: the retrain stage's own trainer (tasks/retrain/retrain.py
`sft_trainer`, the `retrain` section of params.yaml) on caption examples of the bundled train items (their human
titles as targets, no retrieved context), timed step by step. Each row reports seconds per optimizer step, the
real (non-padding) tokens it trains on, and its useful FLOP/s: 3x the forward over those tokens, the LM head on
completion positions only as the stage computes it (tasks/retrain/fit.py), padding not counted. `make bench` sets
that rate against the matmul limit at 2048 rows (a training batch, bench/roofline.py).

Rows, on the same examples, seed and step count: `default` (the retrain section as it is: bf16 autocast over fp32
weights where bf16 units exist, no activation checkpointing), `activation checkpointing` (TRL's default, which
recomputes every layer's activations in the backward pass to save memory), `float32` and, where this process runs
under tcmalloc as the `flywheel` command does (flows/allocator.py), `glibc malloc`: the default row in a child
process on the system allocator. A warm-up step (kernel selection, allocation) runs first on other examples and is
not timed. Peak RSS is the process's high-water mark after the row (rows run in that order, so a later row's figure
covers the earlier ones; the child's is its own). `--profile` adds the default row's top operators by self CPU time
over two more steps (torch profiler) and the oneDNN primitives a one-step child run executes (ONEDNN_VERBOSE, which
oneDNN reads at start-up): whether the matmuls reach the AMX kernels.

Run: .venv/bin/python bench/training.py [--steps 8] [--rows NAME ...] [--profile]
Prints a table, writes bench/results/training.json and logs to the MLflow experiment flywheel-bench.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("FLYWHEEL_PROGRESS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import stores  # noqa: E402,F401
from bench.common import bench_splits, caption_phase, log_bench_run  # noqa: E402
from bench.roofline import Dims, scoring_flops  # noqa: E402
from flows.allocator import preload_tcmalloc, preloaded, system_allocator_env  # noqa: E402


def step_flops(dims: Dims, tokenizer, phase) -> tuple[float, int]:
    """(training FLOPs, real tokens) over the phase's examples: 3x the scoring forward (LM head on the completion)."""
    prompts, completions = [], []
    for prompt, target in zip(phase["prompt"], phase["target"]):
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": target}], tokenize=True)
        prompts.append(len(_ids(prompt_ids)))
        completions.append(len(_ids(full)) - prompts[-1])
    return 3 * scoring_flops(dims, prompts, completions), sum(prompts) + sum(completions)


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def step_timer():
    """A trainer callback that records the wall seconds of every optimizer step in `.seconds`."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimer()


def child_run(args: argparse.Namespace, name: str, steps: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    """This bench's default row in a child process under `env` (what a process reads at start-up), in its own folder
    under --work; its JSON lands in that folder as child.json."""
    work = args.work / name
    command = [sys.executable, __file__, "--steps", str(steps), "--rows", "default", "--work", str(work)]
    command += ["--out", str(work / "child.json"), "--mlflow-dir", str(work / "mlflow")]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    done.check_returncode()
    return done


def onednn_primitives(args: argparse.Namespace) -> dict[str, int]:
    """oneDNN primitive executions of a warm-up and one step of the default row, by kind, implementation and source
    data type (e.g. 'matmul brg_matmul:avx10_1_512_amx bf16'), from a child process started with ONEDNN_VERBOSE=1."""
    done = child_run(args, "onednn", 1, {**os.environ, "ONEDNN_VERBOSE": "1"})
    counts = Counter()
    for line in done.stdout.splitlines():
        parts = line.split(",")
        if parts[0] == "onednn_verbose" and "exec" in parts[:4]:
            at = parts.index("exec")
            source = re.search(r"src:(\w+)", line)  # the ISA in the name says nothing of the data type
            counts[f"{parts[at + 2]} {parts[at + 3]} {source.group(1) if source else ''}".strip()] += 1
    return dict(counts.most_common())


def glibc_row(args: argparse.Namespace) -> dict:
    """The default row in a child process on glibc's malloc: the allocator is fixed when a process starts."""
    child_run(args, "glibc", args.steps, system_allocator_env())
    row = json.loads((args.work / "glibc" / "child.json").read_text())["rows"][0]
    return row | {"row": GLIBC_ROW}


ROWS = {  # retrain-section overrides per row
    "activation checkpointing": {"activation_checkpointing": True},
    "default": {},
    "float32": {"bf16": False},
}
GLIBC_ROW = "glibc malloc"  # the default row without tcmalloc (flows/allocator.py), where this process runs under it


def run_row(name: str, path, settings, warmup, timed, work: Path, profile: bool) -> dict:
    """One row: a warm-up step, then the timed steps; with `profile`, two more steps under the torch profiler
    (its overhead stays out of the timing)."""
    import resource

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.retrain.fit import fit
    from tasks.retrain.retrain import sft_trainer

    cfg, seed, plain = settings.retrain.model_copy(update=ROWS[name]), settings.seed, (0.0, 0.0)
    steps = len(timed) // cfg.sft.batch_size
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(path)
    model = fit(sft_trainer(model, tokenizer, warmup, 1, cfg, seed, work / f"{name}-warmup", plain))
    trainer = sft_trainer(model, tokenizer, timed, steps, cfg, seed, work / name, plain)
    timer = step_timer()
    trainer.add_callback(timer)
    model = fit(trainer)
    row = {"row": name, "bf16": cfg.bf16, "activation_checkpointing": cfg.activation_checkpointing, "steps": steps}
    row |= {"step_seconds": timer.seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    row["final_loss"] = next(e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        profiled = sft_trainer(model, tokenizer, timed, 2, cfg, seed, work / f"{name}-profile", plain)
        with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
            fit(profiled)
        averages = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in averages) or 1
        row["top_ops"] = [
            {"op": e.key, "self_share": e.self_cpu_time_total / total, "calls": e.count} for e in averages[:12]
        ]
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per row")
    parser.add_argument("--rows", nargs="+", default=[*ROWS, GLIBC_ROW], choices=[*ROWS, GLIBC_ROW])
    parser.add_argument("--profile", action="store_true", help="torch profiler + oneDNN verbose on the default row")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "training")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "training.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer

    from stores.registry import convert_gguf, packaged_gguf
    from tasks.config import load_settings

    settings = load_settings(REPO / "params.yaml")
    path = convert_gguf(
        packaged_gguf(settings.model.gguf_package, settings.model.gguf_file), REPO / ".cache" / "models"
    )
    batch = settings.retrain.sft.batch_size
    train = bench_splits(settings)["train"]
    task = settings.task
    warmup, timed = train.iloc[:batch], train.iloc[batch : batch * (1 + args.steps)]
    warmup, timed = (caption_phase(items, items["reference"], task) for items in (warmup, timed))
    flops, tokens = step_flops(Dims.of(path), AutoTokenizer.from_pretrained(path), timed)
    shutil.rmtree(args.work, ignore_errors=True)  # trainer folders of an earlier run
    args.work.mkdir(parents=True)
    skipped = set() if settings.retrain.bf16 else {"float32"}  # the default row already is float32
    skipped |= {GLIBC_ROW} if preloaded() == "glibc" else set()  # the default row already runs on it
    names = [name for name in [*ROWS, GLIBC_ROW] if name in args.rows and name not in skipped]
    rows = []
    for name in names:
        if name == GLIBC_ROW:
            row = glibc_row(args)
        else:
            row = run_row(name, path, settings, warmup, timed, args.work, args.profile and name == "default")
        seconds = sum(row["step_seconds"])
        row |= {"seconds": seconds, "s_per_step": seconds / row["steps"], "tokens": tokens,
                "tokens_per_step": tokens / row["steps"], "gflop_s": flops / seconds / 1e9}  # fmt: skip
        rows.append(row)
    default = next((r for r in rows if r["row"] == "default"), rows[0])
    for row in rows:
        row["vs_default"] = default["s_per_step"] / row["s_per_step"]
    onednn = onednn_primitives(args) if args.profile else {}

    title = f"SFT steps of {batch} caption examples ({torch.get_num_threads()} threads, {args.steps} timed steps, "
    title += f"{preloaded()} malloc)"
    table = Table(title=title)
    columns = ("row", "bf16", "s/step", "tokens/step", "useful GFLOP/s", "speed vs default", "peak RSS", "final loss")
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["row"], str(r["bf16"]), f"{r['s_per_step']:.2f}", f"{r['tokens_per_step']:.0f}",
                      f"{r['gflop_s']:.0f}", f"{r['vs_default']:.2f}x", f"{r['peak_rss_gib']:.2f} GiB",
                      f"{r['final_loss']:.4f}")  # fmt: skip
    console = Console(width=120)
    console.print(table)
    for op in default.get("top_ops", []):
        console.print(f"  {op['op']:<56} {op['self_share']:6.1%} of self CPU time, {op['calls']} calls")
    for primitive, count in onednn.items():
        console.print(f"  oneDNN {primitive}: {count} executions (warm-up + 1 step)")
    result = {"steps": args.steps, "batch_size": batch, "threads": torch.get_num_threads(), "rows": rows}
    result["allocator"] = preloaded()
    result["onednn"] = onednn
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    metrics = {f"{r['row']}_{key}": r[key] for r in rows for key in ("s_per_step", "gflop_s")}
    log_bench_run("training", {"steps": args.steps, "batch_size": batch}, metrics, args.out, args.mlflow_dir)
    return result


if __name__ == "__main__":
    preload_tcmalloc()  # as the flywheel command runs
    main()
