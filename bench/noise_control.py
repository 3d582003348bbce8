"""Noise control, measured on known noise: AdaTaiLr against no control, fixed-γ TaiLr, small-loss filtering and a
two-component GMM.

Annotations are the human titles of Semanlink train items; a seeded corruptor replaces a known fraction with
swapped captions, truncated titles or tag soup (tasks/denoise/corrupt.py). Detection: each method's noise score
against the known corruptions (AUROC), and precision/recall of what it drops, for two scorers: the packaged model
(v1) and v1 refined on the human-refinement split (what the champion is after a turn). Downstream: the refined
model is trained on the noisy set (rate --downstream-rate) with each method, same steps and seed, and captions the
held-out items; ROUGE-L and MiniLM similarity to the human titles.

Run: .venv/bin/python bench/noise_control.py [--items 200] [--rates 0.1 0.2 0.4] [--steps 12] [--heldout 32]
Prints the tables, writes bench/results/noise_control.json and logs a run to the MLflow experiment flywheel-bench.
Model calls go through an LLM-call cache in .cache/bench/, so a rerun only retrains.
"""

from __future__ import annotations

import argparse
import hashlib
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
from bench.common import log_bench_run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200, help="corrupted train items scored for detection")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    parser.add_argument("--refine-steps", type=int, default=16, help="SFT steps of v1 on the human split")
    parser.add_argument("--downstream-rate", type=float, default=0.2)
    parser.add_argument("--downstream-items", type=int, default=96)
    parser.add_argument("--steps", type=int, default=12, help="SFT steps per method downstream (0: skip)")
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "noise_control.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)

    from stores.llm_cache import LLMCallCache
    from stores.registry import ModelRef, convert_gguf, packaged_gguf, sha256_file
    from stores.store import Store
    from tasks.config import load_settings
    from tasks.llm.cached import CachedLLM
    from tasks.llm.transformers_backend import TransformersBackend

    settings = load_settings(REPO / "params.yaml")
    work = REPO / ".cache" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    items, human, heldout = _splits(settings, args)
    gguf = packaged_gguf(settings.model.gguf_package, settings.model.gguf_file)
    base_path = convert_gguf(gguf, work.parent / "models")
    refined_path = _refined(base_path, human, settings, args.refine_steps, work)
    models = {
        "v1": ModelRef("bench", 1, sha256_file(base_path / "model.safetensors"), base_path),
        "v1-refined": ModelRef("bench", 2, sha256_file(refined_path / "model.safetensors"), refined_path),
    }
    started = time.perf_counter()
    with Store.open(work / "noise_control.duckdb") as store:
        cache = LLMCallCache(store.con)

        def llm(model):
            return CachedLLM(lambda ref: TransformersBackend(ref.path, settings.model.batch_size), cache, model)

        detection = _detection(items, models, llm, settings, args.rates)
        downstream = _downstream(items, heldout, models["v1-refined"], llm, settings, args) if args.steps else []
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "detection": detection,
        "downstream": downstream,
        "seconds": time.perf_counter() - started,
    }
    _report(result, args.out)
    _log_mlflow(result, args.out, args.mlflow_dir)
    return result


def _splits(settings, args):
    from tasks.ingest.ingest import assign_split, ingest_semanlink

    records, _ = ingest_semanlink(settings.data.min_comment_chars, settings.data.min_title_chars)
    frame = pd.DataFrame(records)
    frame["split"] = [
        assign_split(settings.seed, i, settings.data.heldout_fraction, settings.data.human_fraction)
        for i in frame["item_id"]
    ]
    frame["order"] = [hashlib.sha256(f"bench:{i}".encode()).hexdigest() for i in frame["item_id"]]
    frame = frame.sort_values("order").drop(columns="order").reset_index(drop=True)
    by_split = {name: group.reset_index(drop=True) for name, group in frame.groupby("split")}
    return by_split["train"].head(args.items), by_split["human"], by_split["heldout"].head(args.heldout)


def _refined(base_path: Path, human: pd.DataFrame, settings, steps: int, work: Path) -> Path:
    """v1 after SFT on the human-refinement titles (cached by its inputs)."""
    from tasks.prompts import caption_messages
    from tasks.retrain.retrain import train

    key = hashlib.sha256(json.dumps([str(base_path), list(human["item_id"]), steps, settings.seed]).encode())
    target = work / f"refined-{key.hexdigest()[:12]}"
    if not (target / "model" / "model.safetensors").exists():
        phase = pd.DataFrame(
            {
                "prompt": [caption_messages(r, settings.data.max_signal_chars) for r in human.to_dict("records")],
                "target": human["title"],
                "kind": "sft-human",
            }
        )
        cfg = settings.retrain.model_copy(update={"sft": settings.retrain.sft.model_copy(update={"max_steps": steps})})
        train(base_path, [phase], pd.DataFrame(), cfg, settings.seed, target)
    return target / "model"


def _scores(annotations: pd.DataFrame, items: pd.DataFrame, llm, settings) -> list[np.ndarray]:
    from tasks.denoise.denoise import token_logprobs

    frame = pd.DataFrame({"item_id": annotations["item_id"], "candidate": 0, "caption": annotations["annotation"]})
    return token_logprobs(frame, items, llm, settings.data.max_signal_chars)


def _detection(items, models, llm, settings, rates) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    from tasks.denoise.corrupt import corrupt
    from tasks.denoise.methods import METHODS, decide

    rows = []
    for rate in rates:
        annotations = corrupt(items, rate, settings.seed)
        noisy = (annotations["corruption"] != "").to_numpy()
        for name, model in models.items():
            logprobs = _scores(annotations, items, llm(model), settings)
            for method in METHODS:
                decision = decide(method, logprobs, settings.denoise.model_copy(update={"method": method}), 0)
                dropped = ~decision.kept
                rows.append(
                    {
                        "rate": rate,
                        "scorer": name,
                        "method": method,
                        "auroc": None if method == "none" else float(roc_auc_score(noisy, decision.noise_score)),
                        "dropped": int(dropped.sum()),
                        "precision": float(noisy[dropped].mean()) if dropped.any() else None,
                        "recall": float(dropped[noisy].mean()) if noisy.any() else None,
                        "gamma": decision.gamma,
                        "noise_level": decision.noise_level,
                    }
                )
    return rows


def _downstream(items, heldout, model, llm, settings, args) -> list[dict]:
    """Train the current model on the noisy set with each method; caption the held-out items."""
    import shutil
    import tempfile

    from stores.registry import ModelRef, sha256_file
    from tasks.denoise.corrupt import corrupt
    from tasks.denoise.methods import METHODS, decide
    from tasks.evaluate.evaluate import score_captions
    from tasks.prompts import caption_messages
    from tasks.retrain.retrain import train

    subset = items.head(args.downstream_items)
    annotations = corrupt(subset, args.downstream_rate, settings.seed)
    logprobs = _scores(annotations, subset, llm(model), settings)
    cfg = settings.retrain.model_copy(update={"sft": settings.retrain.sft.model_copy(update={"max_steps": args.steps})})
    sampling, chars = settings.evaluate.sampling, settings.data.max_signal_chars
    start = score_captions(heldout, llm(model), sampling, chars, "start")
    rows = [{"method": "(starting model)", "kept": 0, "gamma": 0.0, **_means(start)}]
    for method in METHODS:
        decision = decide(method, logprobs, settings.denoise.model_copy(update={"method": method}), 0)
        kept = annotations[decision.kept]
        phase = pd.DataFrame(
            {
                "prompt": [caption_messages(r, chars) for r in subset[decision.kept].to_dict("records")],
                "target": kept["annotation"].values,
                "kind": "sft-synthetic",
            }
        )
        out = Path(tempfile.mkdtemp(prefix=f"noise-{method}-", dir=REPO / ".cache" / "bench"))
        try:
            tailr = (decision.gamma, settings.denoise.min_weight)
            train(model.path, [phase], pd.DataFrame(), cfg, settings.seed, out, tailr)
            trained = ModelRef("bench", 100, sha256_file(out / "model" / "model.safetensors"), out / "model")
            board = score_captions(heldout, llm(trained), sampling, chars, method)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows.append({"method": method, "kept": int(decision.kept.sum()), "gamma": decision.gamma, **_means(board)})
    return rows


def _means(board: pd.DataFrame) -> dict:
    return {"rouge_l": float(board["rouge_l"].mean()), "minilm_sim": float(board["minilm_sim"].mean())}


def _report(result: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    table = Table(title="Noise detection on known corruptions (AUROC of the noise score; precision/recall of drops)")
    for column in ("rate", "scorer", "method", "AUROC", "dropped", "precision", "recall", "γ", "ε̂"):
        table.add_column(column, justify="left" if column in ("scorer", "method") else "right")
    fmt = lambda v, spec=".3f": "—" if v is None else format(v, spec)  # noqa: E731
    for r in result["detection"]:
        table.add_row(
            fmt(r["rate"], ".0%"),
            r["scorer"],
            r["method"],
            fmt(r["auroc"]),
            str(r["dropped"]),
            fmt(r["precision"], ".2f"),
            fmt(r["recall"], ".2f"),
            fmt(r["gamma"], ".3f"),
            fmt(r["noise_level"], ".3f"),
        )
    console.print(table)
    if result["downstream"]:
        board = Table(title="Downstream: trained on the noisy set with each method, scored on held-out items")
        for column in ("method", "kept", "γ", "ROUGE-L", "MiniLM sim"):
            board.add_column(column, justify="left" if column == "method" else "right")
        for r in result["downstream"]:
            scores = f"{r['rouge_l']:.4f}", f"{r['minilm_sim']:.4f}"
            board.add_row(r["method"], str(r["kept"]), f"{r['gamma']:.3f}", *scores)
        console.print(board)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out} ({result['seconds']:.0f} s)")


def _log_mlflow(result: dict, out: Path, mlflow_dir: Path) -> None:
    metrics = {
        f"auroc_{r['scorer']}_{r['method']}_{int(r['rate'] * 100)}": r["auroc"]
        for r in result["detection"]
        if r["auroc"] is not None
    }
    for r in result["downstream"]:
        metrics[f"downstream_rouge_l_{r['method'].strip('()').replace(' ', '_')}"] = r["rouge_l"]
    log_bench_run("noise_control", result["args"], metrics, out, mlflow_dir)


if __name__ == "__main__":
    main()
