"""The machine's own limits, measured: matmul throughput (fp32 and bf16) at the shapes the packaged model multiplies,
and memory bandwidth (what bounds batch-1 decode). The suite's engine figures are reported as shares of these
(`bench/all.py`), so "117 tok/s" becomes "N% of what this CPU's matmuls reach".

- Matmul: `a @ b` for every linear layer shape of the model (q/o, k/v, MLP gate/up and down, the tied LM head) at
  16 rows (a decode step of a batch), 512 (a prefill chunk) and 2048 (a training batch); best of `--repeats` after a
  warm-up. The model-weighted figure is one forward's linear FLOPs over the summed time of its shapes. A precision
  that would take longer than `--budget-s` at a row count (bf16 on a CPU without bf16 units: about 1 GFLOP/s) is
  measured on its smallest shape only and reported as skipped.
- Bandwidth: copying a 1 GiB tensor (read + write). Batch-1 decode must stream every weight once per token, so
  weight bytes / bandwidth is a floor on its time per token.
- FLOP counts (`forward_flops`): linear layers 2·in·out per token, attention 2·2·context·hidden per token and layer,
  the LM head only where logits are computed (the last position in generation, the completion in scoring, every
  position in training); a training step is 3x its forward. Padding is not counted: it is work, not output.

Run: .venv/bin/python bench/roofline.py [--repeats 5] [--rows 16 512 2048]
Prints a table, writes bench/results/roofline.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import stores  # noqa: E402,F401
from flows.allocator import preload_tcmalloc  # noqa: E402


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    layers: int
    kv_width: int  # key/value heads x head dim
    vocab: int

    @classmethod
    def of(cls, model_folder: Path) -> Dims:
        config = json.loads((model_folder / "config.json").read_text())
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        kv_width = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim
        return cls(
            config["hidden_size"],
            config["intermediate_size"],
            config["num_hidden_layers"],
            kv_width,
            config["vocab_size"],
        )

    def shapes(self) -> dict[str, tuple[int, int, int]]:
        """name -> (in, out, how many per forward)."""
        h, i, kv = self.hidden, self.intermediate, self.kv_width
        return {
            "q/o proj": (h, h, 2 * self.layers),
            "k/v proj": (h, kv, 2 * self.layers),
            "mlp gate/up": (h, i, 2 * self.layers),
            "mlp down": (i, h, self.layers),
            "lm head": (h, self.vocab, 1),
        }

    @property
    def weight_params(self) -> int:
        return sum(n_in * n_out * count for n_in, n_out, count in self.shapes().values())


def forward_flops(dims: Dims, context: int, tokens: int, logit_rows: int) -> float:
    """FLOPs to run `tokens` new positions after `context` cached ones, with LM-head logits for `logit_rows` of them."""
    body = sum(2 * n_in * n_out * count for name, (n_in, n_out, count) in dims.shapes().items() if name != "lm head")
    attended = tokens * context + tokens * (tokens + 1) / 2  # keys each new position attends to
    attention = 2 * 2 * attended * dims.hidden * dims.layers
    return body * tokens + attention + 2 * dims.hidden * dims.vocab * logit_rows


def generation_flops(dims: Dims, prompt_lengths: list[int], generated_lengths: list[int]) -> float:
    """Generations: each prompt's prefill (logits of its last position), then one position per further token."""
    total = 0.0
    for prompt, generated in zip(prompt_lengths, generated_lengths):
        total += forward_flops(dims, 0, prompt, 1)
        total += sum(forward_flops(dims, prompt + step, 1, 1) for step in range(max(0, generated - 1)))
    return total


def scoring_flops(dims: Dims, prompt_lengths: list[int], completion_lengths: list[int]) -> float:
    """Scoring: one forward over prompt + completion, logits for the completion's positions only."""
    return sum(forward_flops(dims, 0, p + c, c) for p, c in zip(prompt_lengths, completion_lengths))


def _best_seconds(call, repeats: int) -> float:
    call()  # warm-up: kernel selection, allocation
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_probe(dims: Dims, rows: list[int], dtypes: list[str], repeats: int, budget_s: float) -> list[dict]:
    """Every shape at every row count and precision; a (precision, rows) whose smallest shape shows that its shapes
    would take more than `budget_s` (bf16 without bf16 units runs at about 1 GFLOP/s) is skipped and says so."""
    import torch

    results = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for n_rows in rows:
            shapes = sorted(dims.shapes().items(), key=lambda item: item[1][0] * item[1][1])
            for index, (name, (n_in, n_out, _)) in enumerate(shapes):
                a, b = torch.randn(n_rows, n_in, dtype=dtype), torch.randn(n_in, n_out, dtype=dtype)
                seconds = _best_seconds(lambda a=a, b=b: a @ b, repeats)
                rate = 2 * n_rows * n_in * n_out / seconds
                results.append({"dtype": dtype_name, "rows": n_rows, "shape": name, "seconds": seconds,
                                "gflop_s": rate / 1e9})  # fmt: skip
                if index == 0:
                    rest = sum(2 * n_rows * i * o for _, (i, o, _) in shapes[1:]) * (repeats + 1) / rate
                    if rest > budget_s:
                        results.append({"dtype": dtype_name, "rows": n_rows, "skipped": f"the other shapes would "
                                        f"take ~{rest:.0f} s at {rate / 1e9:.1f} GFLOP/s"})  # fmt: skip
                        break
    return results


def model_weighted(dims: Dims, probe: list[dict]) -> dict[str, dict[int, float]]:
    """Per dtype and row count: one forward's linear FLOPs over the summed time of its shapes."""
    shapes = dims.shapes()
    skipped = {(row["dtype"], row["rows"]) for row in probe if "skipped" in row}
    weighted: dict[str, dict[int, float]] = {}
    for row in probe:
        if (row["dtype"], row["rows"]) in skipped:
            continue
        n_in, n_out, count = shapes[row["shape"]]
        flops, seconds = weighted.setdefault(row["dtype"], {}).get(row["rows"], (0.0, 0.0))
        weighted[row["dtype"]][row["rows"]] = (
            flops + 2 * row["rows"] * n_in * n_out * count,
            seconds + row["seconds"] * count,
        )
    return {dtype: {rows: f / s / 1e9 for rows, (f, s) in by_rows.items()} for dtype, by_rows in weighted.items()}


def bandwidth_gb_s(repeats: int, gib: float = 1.0) -> float:
    import torch

    source = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    target = torch.empty_like(source)
    seconds = _best_seconds(lambda: target.copy_(source), repeats)
    return 2 * source.numel() * 4 / seconds / 1e9


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 512, 2048])
    parser.add_argument("--budget-s", type=float, default=60.0, help="skip a precision x rows slower than this")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "roofline.json")
    args = parser.parse_args(argv)
    import torch
    from rich.console import Console
    from rich.table import Table

    from stores.registry import convert_gguf, packaged_gguf
    from tasks.config import load_settings

    settings = load_settings(REPO / "params.yaml")
    folder = convert_gguf(
        packaged_gguf(settings.model.gguf_package, settings.model.gguf_file), REPO / ".cache" / "models"
    )
    dims = Dims.of(folder)
    probe = matmul_probe(dims, args.rows, ["float32", "bfloat16"], args.repeats, args.budget_s)
    weighted = model_weighted(dims, probe)
    bandwidth = bandwidth_gb_s(args.repeats)
    decode_floor = {
        dtype: bandwidth * 1e9 / (dims.weight_params * size) for dtype, size in (("float32", 4), ("bfloat16", 2))
    }

    table = Table(title=f"Matmul GFLOP/s at the model's shapes ({torch.get_num_threads()} threads)")
    table.add_column("shape")
    columns = [(dtype, rows) for dtype in ("float32", "bfloat16") for rows in args.rows]
    for dtype, rows in columns:
        table.add_column(f"{dtype} {rows} rows", justify="right")
    for name in dims.shapes():
        cells = {(r["dtype"], r["rows"]): f"{r['gflop_s']:.1f}" for r in probe if r.get("shape") == name}
        table.add_row(name, *(cells.get(c, "skipped") for c in columns))
    model_row = [f"{weighted[d][r]:.1f}" if r in weighted.get(d, {}) else "skipped" for d, r in columns]
    table.add_row("model-weighted", *model_row, style="bold")
    console = Console(width=150)
    console.print(table)
    for row in probe:
        if "skipped" in row:
            console.print(f"skipped {row['dtype']} at {row['rows']} rows: {row['skipped']}")
    console.print(
        f"memory bandwidth (1 GiB copy): {bandwidth:.1f} GB/s; batch-1 decode floor: "
        + ", ".join(f"{d} {v:.0f} tok/s" for d, v in decode_floor.items())
        + f" ({dims.weight_params / 1e6:.0f}M weights streamed per token)"
    )
    result = {
        "threads": torch.get_num_threads(),
        "dims": asdict(dims),
        "matmul": probe,
        "model_weighted_gflop_s": {d: {str(r): v for r, v in by.items()} for d, by in weighted.items()},
        "bandwidth_gb_s": bandwidth,
        "decode_floor_tok_s": decode_floor,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def limit_gflop_s(roofline: dict, rows: int = 512) -> tuple[float, str]:
    """The best model-weighted matmul rate at `rows` rows over both precisions, and which precision reaches it."""
    weighted = roofline["model_weighted_gflop_s"]
    rates = {dtype: by_rows[str(rows)] for dtype, by_rows in weighted.items() if str(rows) in by_rows}
    best = max(rates, key=rates.get)
    return rates[best], best


if __name__ == "__main__":
    preload_tcmalloc()  # the engines it is the limit of run under it (bench/generation.py, bench/training.py)
    main()
