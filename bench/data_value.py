"""What a turn's data is worth, against the ceiling no annotation can pass. From the packaged model, all with the
same learning rate and seed, scored on the held-out items (ROUGE-L and MiniLM similarity to the human titles):

- `human`: fine-tuned on a turn's human titles (`--human-items`, `--refine-steps`): what the `refine` stage makes
  and the `human_only` arm promotes;
- `synthetic`: `human`, then one epoch on its own best-of-k captions (by mean token log-prob, the `nll` noise score)
  of `--train-items` train items: what the default turn trains before DPO;
- `consensus`: the same, each item's candidate picked by `denoise.select: consensus` (agreement with the other
  candidates, closeness to the content and log-prob ranks together: tasks/denoise/methods.py);
- `random`: the same, with one random sample per item instead of the best of k (what best-of-n adds);
- `gold`: `human`, then one epoch on the same train items' human titles: perfect annotation, the ceiling for any
  synthetic data of those items (the flywheel never sees these titles).

Each row carries the paired bootstrap 95% intervals of its ROUGE-L delta against `human` and against `gold`, and
the annotations' own quality against the train titles. A turn's synthetic data earns its place when `synthetic`
beats `human`; the gap to `gold` is what better annotation could still win.

Run: .venv/bin/python bench/data_value.py [--human-items 32] [--train-items 256] [--candidates 8] [--heldout N]
Prints the table, writes bench/results/data_value.json and logs a run to the MLflow experiment flywheel-bench.
Models and model calls are cached in .cache/bench/ (by their inputs), so a rerun only scores.
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import stores  # noqa: E402,F401
from bench.common import bench_splits, fine_tuned, log_bench_run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--human-items", type=int, default=32, help="human titles of the refinement (a turn's)")
    parser.add_argument("--refine-steps", type=int, default=16)
    parser.add_argument("--train-items", type=int, default=256, help="train items annotated (or gold-titled)")
    parser.add_argument("--candidates", type=int, default=8, help="samples per item for best-of-k")
    parser.add_argument("--heldout", type=int, default=None, help="held-out items scored (all)")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_value.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)

    from stores.llm_cache import LLMCallCache
    from stores.registry import ModelRef, convert_gguf, packaged_gguf, sha256_file
    from stores.store import Store
    from tasks.config import load_settings
    from tasks.llm.cached import CachedLLM
    from tasks.llm.transformers_backend import TransformersBackend

    started = time.perf_counter()
    settings = load_settings(REPO / "params.yaml")
    args.work.mkdir(parents=True, exist_ok=True)
    splits = bench_splits(settings)
    human, train = splits["human"].head(args.human_items), splits["train"].head(args.train_items)
    heldout = splits["heldout"].head(args.heldout or len(splits["heldout"]))
    gguf = packaged_gguf(settings.model.gguf_package, settings.model.gguf_file)
    base = convert_gguf(gguf, REPO / ".cache" / "models")
    with Store.open(args.work / "data_value.duckdb") as store:
        cache = LLMCallCache(store.con)

        def llm(path: Path):
            def load(ref: ModelRef):
                return TransformersBackend(ref.path, settings.model.batch_size, dtype=settings.model.dtype)

            ref = ModelRef("bench", 1, sha256_file(path / "model.safetensors"), path)
            return CachedLLM(load, cache, ref, progress=False, engine=f"transformers-{settings.model.dtype}")

        refined = fine_tuned(base, human, list(human["reference"]), settings, args.refine_steps, args.work)
        annotations = _picks(train, llm(refined), settings, args.candidates)
        train = train.set_index("item_id", drop=False).loc[annotations.index].reset_index(drop=True)
        epoch = max(1, -(-len(train) // settings.retrain.sft.batch_size))
        models = {"base": base, "human": refined}
        for name, targets in (
            ("synthetic", annotations["best"]),
            ("consensus", annotations["consensus"]),
            ("random", annotations["random"]),
            ("gold", train["reference"]),
        ):
            models[name] = fine_tuned(refined, train, list(targets), settings, epoch, args.work)
        rows = _scoreboard(models, heldout, llm, settings)
    quality = _annotation_quality(annotations, train)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "annotations": quality}
    result["items"] = {"human": len(human), "train": len(train), "heldout": len(heldout)}
    result["seconds"] = time.perf_counter() - started
    _report(result, args.out)
    metrics = {f"{m}_{r['model']}": r[m] for r in rows for m in ("rouge_l", "minilm_sim")}
    log_bench_run("data_value", result["args"], metrics | quality, args.out, args.mlflow_dir)
    return result


def _picks(train: pd.DataFrame, llm, settings, candidates: int) -> pd.DataFrame:
    """Per train item (index): the best of `candidates` samples by mean token log-prob, the consensus pick, and one
    sample drawn at random; empty captions are left out (the turn quarantines them), an item without any is dropped."""
    from tasks.denoise.methods import best_per_item, consensus
    from tasks.denoise.scores import content_distance
    from tasks.prompts import first_line, sample_captions

    samples = sample_captions(
        train, llm, candidates, settings.annotate.sampling, settings.task, settings.seed, "annotate"
    )
    frame = pd.DataFrame(
        {
            "item_id": [item["item_id"] for item, _, _ in samples],
            "caption": [first_line(g.text) for _, _, g in samples],
            "score": [float(np.mean(g.token_logprobs)) for _, _, g in samples],
        }
    )
    frame = frame[frame["caption"] != ""].reset_index(drop=True)
    rng = np.random.default_rng(settings.seed)
    best = frame.loc[frame.groupby("item_id", sort=False)["score"].idxmax()].set_index("item_id")["caption"]
    records = train.set_index("item_id", drop=False).loc[frame["item_id"]].to_dict("records")
    distance = content_distance(list(frame["caption"]), records, settings.task)
    agreed = best_per_item(
        frame["item_id"], consensus(frame["item_id"], list(frame["caption"]), -frame["score"], distance)
    )
    picked = frame[agreed].set_index("item_id")["caption"]
    drawn = frame.groupby("item_id", sort=False)["caption"].agg(lambda c: c.iloc[rng.integers(len(c))])
    return pd.DataFrame({"best": best, "consensus": picked.loc[best.index], "random": drawn.loc[best.index]})


def _annotation_quality(annotations: pd.DataFrame, train: pd.DataFrame) -> dict[str, float]:
    from tasks.metrics import reference_scores

    titles = list(train["reference"])
    return {
        f"annotations_{kind}_rouge_l": float(np.mean(reference_scores(list(annotations[kind]), titles)["rouge_l"]))
        for kind in ("best", "consensus", "random")
    }


def _scoreboard(models: dict[str, Path], heldout: pd.DataFrame, llm, settings) -> list[dict]:
    from tasks.evaluate.evaluate import score_captions
    from tasks.metrics import paired_bootstrap

    sampling, task = settings.evaluate.sampling, settings.task
    boards = {name: score_captions(heldout, llm(path), sampling, task, name) for name, path in models.items()}
    human, gold = (boards[name]["rouge_l"].to_numpy() for name in ("human", "gold"))
    rows = []
    for name, board in boards.items():
        mean, low, high = paired_bootstrap(board["rouge_l"].to_numpy() - human, settings.seed)
        to_gold = paired_bootstrap(board["rouge_l"].to_numpy() - gold, settings.seed)
        rows.append(
            {
                "model": name,
                "rouge_l": float(board["rouge_l"].mean()),
                "minilm_sim": float(board["minilm_sim"].mean()),
                "delta_vs_human": mean,
                "ci_low": low,
                "ci_high": high,
                "delta_vs_gold": list(to_gold),  # mean, CI low, CI high: what perfect annotation would still add
            }
        )
    return rows


def _report(result: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    items = result["items"]
    title = f"What the data is worth: {items['human']} human titles, {items['train']} train items"
    table = Table(title=f"{title}, scored on {items['heldout']} held-out items")
    for column in ("model", "ROUGE-L", "MiniLM sim", "Δ ROUGE-L vs human [95% CI]", "Δ vs gold [95% CI]"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in result["rows"]:
        delta = f"{r['delta_vs_human']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
        to_gold = "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r["delta_vs_gold"])
        table.add_row(r["model"], f"{r['rouge_l']:.4f}", f"{r['minilm_sim']:.4f}", delta, to_gold)
    console.print(table)
    quality = result["annotations"]
    console.print(
        f"annotations against the train titles: best of k {quality['annotations_best_rouge_l']:.4f}, consensus "
        f"{quality['annotations_consensus_rouge_l']:.4f}, one random sample {quality['annotations_random_rouge_l']:.4f}"
        " (gold: 1.0)"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
