"""Noise control, measured on known noise, easy and hard: AdaTaiLr with each noise score (tasks/denoise/scores.py)
against no control, fixed-γ TaiLr, small-loss filtering and a two-component GMM.

Annotations are the human titles of Semanlink train items; a seeded corruptor replaces a known fraction
(tasks/denoise/corrupt.py) with easy noise (a random other item's title, a truncated title, tag soup) or hard noise
(the title of the most similar train item outside the scored ones, so no score can find the title's source among
the items it looks at; the title with its key term swapped for another item's). Detection, per
noise group and rate, for two scorers, the packaged model (v1) and v1 refined on half the human split (what the
champion is after a turn): AUROC of every noise score, AdaTaiLr's ε̂ (from the tail, or from the fit on trusted
pairs of the other half of the human split) and the precision/recall of what it drops, and the baselines' AUROC.
Downstream: the refined model is trained on a set with all five kinds of noise (rate --downstream-rate) with each
method, same steps and seed, and captions the held-out items; ROUGE-L (with a paired 95% interval against `none`)
and MiniLM similarity to the human titles.

Run: .venv/bin/python bench/noise_control.py [--items 200] [--offset 0] [--rates 0.1 0.2 0.4] [--steps 12]
     [--heldout 32] [--scorers v1 v1-refined]
Prints the tables, writes bench/results/noise_control.json and logs a run to the MLflow experiment flywheel-bench.
Model calls go through an LLM-call cache in .cache/bench/, so a rerun only retrains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("FLYWHEEL_PROGRESS", "0")

import pandas as pd  # noqa: E402

import stores  # noqa: E402,F401
from bench.common import bench_splits, fine_tuned, log_bench_run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200, help="corrupted train items scored for detection")
    parser.add_argument("--offset", type=int, default=0, help="train items skipped first (a slice not tuned on)")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    parser.add_argument("--trusted-items", type=int, default=None, help="human items for the trusted fit (all)")
    parser.add_argument("--scorers", nargs="+", choices=SCORERS, default=list(SCORERS), help="models that score")
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
    splits = bench_splits(settings)
    items = splits["train"].iloc[args.offset : args.offset + args.items].reset_index(drop=True)
    outside = splits["train"][~splits["train"]["item_id"].isin(items["item_id"])]
    human, heldout = splits["human"], splits["heldout"].head(args.heldout)
    gguf = packaged_gguf(settings.model.gguf_package, settings.model.gguf_file)
    base_path = convert_gguf(gguf, work.parent / "models")
    refine_split, trusted_split = _halves(human)
    trusted_split = trusted_split.head(args.trusted_items or len(trusted_split))
    references = list(refine_split["reference"])
    refined_path = fine_tuned(base_path, refine_split, references, settings, args.refine_steps, work)
    models = {
        "v1": ModelRef("bench", 1, sha256_file(base_path / "model.safetensors"), base_path),
        "v1-refined": ModelRef("bench", 2, sha256_file(refined_path / "model.safetensors"), refined_path),
    }
    scorers = {name: models[name] for name in args.scorers}
    started = time.perf_counter()
    with Store.open(work / "noise_control.duckdb") as store:
        cache = LLMCallCache(store.con)

        @lru_cache(maxsize=2)  # one loaded model per scorer, not one per client
        def backend(path: Path):
            return TransformersBackend(path, settings.model.batch_size)

        def llm(model):
            return CachedLLM(lambda ref: backend(ref.path), cache, model)

        detection = _detection(items, outside, trusted_split, scorers, llm, settings, args.rates)
        downstream = (
            _downstream(items, outside, trusted_split, heldout, models["v1-refined"], llm, settings, args)
            if args.steps
            else []
        )
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "detection": detection,
        "downstream": downstream,
        "seconds": time.perf_counter() - started,
    }
    _report(result, args.out)
    _log_mlflow(result, args.out, args.mlflow_dir)
    return result


SCORERS = ("v1", "v1-refined")  # the packaged model; it refined on half the human split (the turn's scorer)


def _halves(human: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(refine, trusted): v1 is refined on one half of the human split, the trusted pairs come from the other, so
    the scorer has never trained on the titles its trusted fit is made of (as in a turn, whose window is new)."""
    half = len(human) // 2
    return human.iloc[:half].reset_index(drop=True), human.iloc[half:].reset_index(drop=True)


def _features(annotations: pd.DataFrame, items: pd.DataFrame, llm, settings) -> pd.DataFrame:
    """Every feature of the annotations, the scored items being contrast's pool."""
    from tasks.denoise.scores import features

    records = items.to_dict("records")
    return features(list(annotations["annotation"]), records, llm, settings.task, records)


def _neighbour_titles(items: pd.DataFrame, outside: pd.DataFrame, settings) -> list[str]:
    """Each item's most similar item of `outside` (by content), whose title the neighbour corruption puts in."""
    from tasks.denoise.scores import nearest

    others = outside.to_dict("records")
    return [others[j]["reference"] for j in nearest(items.to_dict("records"), others, settings.task, 1)[:, 0]]


AUROC_COLUMNS = ("nll", "pmi", "content", "contrast", "fitted_without_contrast", "fitted_with_detail", "fitted")
KIND_GROUPS = {"easy": ("swap", "truncate", "tag_soup"), "neighbour": ("neighbour",), "detail": ("detail",)}


def _detection(items, outside, human, models, llm, settings, rates) -> list[dict]:
    """Per corruption group, rate and scorer: AUROC of every noise score, and what AdaTaiLr drops with it (ε̂ from
    the tail for nll/pmi/content/contrast, from the trusted human-split fit for `fitted` and for the same fit
    without the contrast feature and with the wrong-detail detector, the ablations that say what each adds); the
    baselines on the NLL."""
    from sklearn.metrics import roc_auc_score

    from tasks.denoise.corrupt import corrupt
    from tasks.denoise.methods import METHODS, decide
    from tasks.denoise.scores import DETECTORS, SCORES, WITH_DETAIL, features, fit_trusted, noise_scores, trusted_pairs

    neighbours = _neighbour_titles(items, outside, settings)
    captions, trusted_items, kind = trusted_pairs(human, items, settings.task, settings.seed, details=True)
    rows = []
    for name, model in models.items():
        trusted = features(captions, trusted_items, llm(model), settings.task, items.to_dict("records"))
        without_contrast = DETECTORS | {"wrong_item": [f for f in DETECTORS["wrong_item"] if f != "contrast"]}
        fits = {
            "fitted": fit_trusted(trusted, kind, settings.seed),
            "fitted_without_contrast": fit_trusted(trusted, kind, settings.seed, without_contrast),
            "fitted_with_detail": fit_trusted(trusted, kind, settings.seed, WITH_DETAIL),
        }
        for group, kinds in KIND_GROUPS.items():
            for rate in rates:
                annotations = corrupt(items, rate, settings.seed, kinds, neighbours)
                noisy = (annotations["corruption"] != "").to_numpy()
                frame = _features(annotations, items, llm(model), settings)
                logprobs = list(frame["logprobs"])
                runs = [("adatailr", score) for score in (*SCORES, "fitted_without_contrast", "fitted_with_detail")]
                runs += [(m, "nll") for m in METHODS if m != "adatailr"]
                for method, score in runs:
                    cfg = settings.denoise.model_copy(update={"method": method})
                    fit = fits.get(score, fits["fitted"])
                    level = fit.noise_level(frame) if score in fits else None
                    ranks = fit.score(frame) if score in fits else noise_scores(score, frame, None)
                    decision = decide(method, logprobs, cfg, 0, ranks, level)
                    dropped = ~decision.kept
                    auroc = None if method == "none" else float(roc_auc_score(noisy, decision.noise_score))
                    rows.append(
                        {
                            "corruption": group,
                            "rate": rate,
                            "scorer": name,
                            "method": method,
                            "score": score,
                            "auroc": auroc,
                            "dropped": int(dropped.sum()),
                            "precision": float(noisy[dropped].mean()) if dropped.any() else None,
                            "recall": float(dropped[noisy].mean()) if noisy.any() else None,
                            "gamma": decision.gamma,
                            "noise_level": decision.noise_level,
                            "trusted_tpr": fit.tpr,
                            "trusted_fpr": fit.fpr,
                        }
                    )
    return rows


def _downstream(items, outside, human, heldout, model, llm, settings, args) -> list[dict]:
    """Train the current model on the noisy set with each method; caption the held-out items."""
    import shutil
    import tempfile

    from stores.registry import ModelRef, sha256_file
    from tasks.denoise.corrupt import CORRUPTIONS, corrupt
    from tasks.denoise.methods import METHODS, decide
    from tasks.denoise.scores import features, fit_trusted, noise_scores, trusted_pairs
    from tasks.evaluate.evaluate import score_captions
    from tasks.metrics import paired_bootstrap
    from tasks.prompts import prompt_messages
    from tasks.retrain.retrain import train

    subset = items.head(args.downstream_items)
    neighbours = _neighbour_titles(subset, outside, settings)
    annotations = corrupt(subset, args.downstream_rate, settings.seed, CORRUPTIONS, neighbours)
    frame = _features(annotations, subset, llm(model), settings)
    logprobs = list(frame["logprobs"])
    captions, trusted_items, kind = trusted_pairs(human, subset, settings.task, settings.seed)
    trusted = features(captions, trusted_items, llm(model), settings.task, subset.to_dict("records"))
    fit = fit_trusted(trusted, kind, settings.seed)
    cfg = settings.retrain.model_copy(update={"sft": settings.retrain.sft.model_copy(update={"max_steps": args.steps})})
    sampling, task = settings.evaluate.sampling, settings.task
    start = score_captions(heldout, llm(model), sampling, task, "start")
    rows = [{"method": "(starting model)", "kept": 0, "gamma": 0.0, **_means(start)}]
    boards = {}
    for method in [*METHODS, "adatailr+fitted"]:
        noise_cfg = settings.denoise.model_copy(update={"method": method.split("+")[0]})
        if method == "adatailr+fitted":
            fitted, level = noise_scores("fitted", frame, fit), fit.noise_level(frame)
            decision = decide("adatailr", logprobs, noise_cfg, 0, fitted, level)
        else:
            decision = decide(method, logprobs, noise_cfg, 0)
        kept = annotations[decision.kept]
        phase = pd.DataFrame(
            {
                "prompt": [prompt_messages(r, task) for r in subset[decision.kept].to_dict("records")],
                "target": kept["annotation"].values,
                "kind": "sft-synthetic",
            }
        )
        out = Path(tempfile.mkdtemp(prefix=f"noise-{method}-", dir=REPO / ".cache" / "bench"))
        try:
            tailr = (decision.gamma, settings.denoise.min_weight)
            train(model.path, [phase], pd.DataFrame(), cfg, settings.seed, out, tailr)
            trained = ModelRef("bench", 100, sha256_file(out / "model" / "model.safetensors"), out / "model")
            board = score_captions(heldout, llm(trained), sampling, task, method)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows.append({"method": method, "kept": int(decision.kept.sum()), "gamma": decision.gamma, **_means(board)})
        boards[method] = board["rouge_l"].to_numpy(dtype=float)
    for row in rows[1:]:  # paired over the held-out items, against training on everything (no control)
        row["rouge_l_vs_none"] = paired_bootstrap(boards[row["method"]] - boards["none"], settings.seed)
    return rows


def _means(board: pd.DataFrame) -> dict:
    return {"rouge_l": float(board["rouge_l"].mean()), "minilm_sim": float(board["minilm_sim"].mean())}


def _report(result: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    table = Table(title="Noise detection on known corruptions: AUROC per noise score; AdaTaiLr's ε̂ and drops")
    columns = ["noise", "rate", "scorer", "AUROC nll", "pmi", "content", "contrast", "fitted w/o contrast"]
    columns += ["with detail", "fitted", "ε̂ tail", "ε̂ trusted w/o contrast", "with detail", "ε̂ trusted"]
    columns += ["P/R nll", "P/R fitted", "best baseline AUROC"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("noise", "scorer") else "right")
    fmt = lambda v, spec=".3f": "—" if v is None or pd.isna(v) else format(v, spec)  # noqa: E731
    frame = pd.DataFrame(result["detection"])
    for (group, rate, scorer), rows in frame.groupby(["corruption", "rate", "scorer"], sort=False):
        ada = rows[rows["method"] == "adatailr"].set_index("score")
        baselines = rows[(rows["method"] != "adatailr") & rows["auroc"].notna()]
        pr = lambda r: f"{fmt(r['precision'], '.2f')}/{fmt(r['recall'], '.2f')}"  # noqa: E731
        table.add_row(
            group,
            fmt(rate, ".0%"),
            scorer,
            *(fmt(ada.loc[score, "auroc"]) for score in AUROC_COLUMNS),
            *(fmt(ada.loc[score, "noise_level"]) for score in ("nll", *AUROC_COLUMNS[-3:])),
            pr(ada.loc["nll"]),
            pr(ada.loc["fitted"]),
            fmt(baselines["auroc"].max() if len(baselines) else None),
        )
    console.print(table)
    if result["downstream"]:
        board = Table(title="Downstream: trained on the noisy set with each method, scored on held-out items")
        for column in ("method", "kept", "γ", "ROUGE-L", "vs none [95% CI]", "MiniLM sim"):
            board.add_column(column, justify="left" if column == "method" else "right")
        for r in result["downstream"]:
            mean, low, high = r.get("rouge_l_vs_none", (None, None, None))
            versus = "" if mean is None else f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"
            scores = f"{r['rouge_l']:.4f}", versus, f"{r['minilm_sim']:.4f}"
            board.add_row(r["method"], str(r["kept"]), f"{r['gamma']:.3f}", *scores)
        console.print(board)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out} ({result['seconds']:.0f} s)")


def _log_mlflow(result: dict, out: Path, mlflow_dir: Path) -> None:
    metrics = {
        f"auroc_{r['corruption']}_{r['scorer']}_{r['method']}_{r['score']}_{int(r['rate'] * 100)}": r["auroc"]
        for r in result["detection"]
        if r["auroc"] is not None
    }
    for r in result["downstream"]:
        name = r["method"].strip("()").replace(" ", "_").replace("+", "_")
        metrics[f"downstream_rouge_l_{name}"] = r["rouge_l"]
    log_bench_run("noise_control", result["args"], metrics, out, mlflow_dir)


if __name__ == "__main__":
    main()
