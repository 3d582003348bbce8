"""Preference data, measured: plain pairs vs TSO vs Iter-W2S-RLAIF (α ∈ {0, 0.3, 0.5}), same DPO step budget and
seed, on top of the same SFT'd policy.

Turn 1 (shared): ingest → refine (trains nothing) → annotate → denoise → SFT only (no DPO) → v2, made champion. Turn 2,
once per method: the preference stage with the method's collection params, then DPO-only retraining of v2 with the
method's DPO params (SFT skipped), then the evaluate stage (the held-out scoreboard slice, v2 vs the method's model).
Also the implicit-reward preference accuracy on held-out pairs: the human title (chosen) against a v2 sample (rejected)
on held-out items outside the scoreboard slice, counted right when β·log π/π_ref ranks the title higher (π_ref = v2).

Methods (params overrides, see METHODS): plain = one model at one temperature, best vs worst, sigmoid DPO, one
round; tso = model matrix (v2 at two temperatures + v1) with human references and correction, dual-clip DPO, two
rounds with reference update and policy regeneration; w2s-α = response distribution set of different models (v2,
v1), external scorer with v1 as LLM judge, sigmoid DPO, two rounds with reference update and regeneration, ExPO α.

Run: .venv/bin/python bench/preference.py [--dpo-steps 8] [--prompts 16] [--methods plain tso w2s-0 w2s-0.3 w2s-0.5]
Prints the tables, writes bench/results/preference.json and logs a run to the MLflow experiment flywheel-bench.
Its project lives in .cache/bench/preference (store + LLM-call cache), so a rerun costs no model call twice.
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

import stores  # noqa: E402,F401
from bench.common import log_bench_run, project_settings  # noqa: E402

_MATRIX_TSO = [
    {"model": "champion", "temperature": 0.7, "top_p": 0.95, "responses": 2},
    {"model": "champion", "temperature": 1.0, "top_p": 0.95, "responses": 2},
    {"model": "base", "temperature": 1.0, "top_p": 0.95, "responses": 2},
]
_MATRIX_W2S = [
    {"model": "champion", "temperature": 0.7, "top_p": 0.95, "responses": 2},
    {"model": "base", "temperature": 0.7, "top_p": 0.95, "responses": 2},
]
_PLAIN_DPO = {"loss": "sigmoid", "rounds": 1, "regenerate": False, "extrapolation_alpha": 0.0}
METHODS = {
    "plain": (
        {
            "matrix": [{"model": "champion", "temperature": 1.0, "top_p": 0.95, "responses": 4}],
            "human_prompts_per_turn": 0,
            "correct_with_humans": False,
            "human_label_share": 0.0,
        },
        _PLAIN_DPO,
    ),
    "tso": (
        {"matrix": _MATRIX_TSO, "human_prompts_per_turn": 4, "correct_with_humans": True},
        {"loss": "dual_clip", "rounds": 2, "regenerate": True, "extrapolation_alpha": 0.0},
    ),
    **{
        f"w2s-{alpha:g}": (
            {"matrix": _MATRIX_W2S, "human_prompts_per_turn": 0, "correct_with_humans": False, "judge_version": 1},
            {"loss": "sigmoid", "rounds": 2, "regenerate": True, "extrapolation_alpha": alpha},
        )
        for alpha in (0.0, 0.3, 0.5)
    },
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--prompts", type=int, default=16, help="train prompts per method")
    parser.add_argument("--dpo-steps", type=int, default=8)
    parser.add_argument("--sft-steps", type=int, default=12, help="turn-1 SFT steps that make v2")
    parser.add_argument("--heldout", type=int, default=48, help="scoreboard items")
    parser.add_argument("--heldout-pairs", type=int, default=24)
    parser.add_argument("--turn1-items", type=int, default=32, help="items annotated for the turn-1 SFT that makes v2")
    parser.add_argument("--context-docs", type=int, default=None, help="0: no retrieved context (default: params)")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "preference")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "preference.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)
    from tasks.runner import run_stage

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    base = _params(
        args, "turn1", {"human_prompts_per_turn": 0, "prompts_per_turn": 2}, {"max_steps": 0}, args.sft_steps
    )
    for stage in ("ingest", "context", "refine", "annotate", "denoise", "preference", "rewrite", "retrain"):
        run_stage(stage, base, 1)
    policy = _make_champion(base, run_stage("retrain", base, 1).summary["candidate_version"])
    rows, stats = [], []
    for method in args.methods:
        collection, dpo = METHODS[method]
        settings = _params(args, method, collection, dpo, 0)
        for stage in ("refine", "annotate", "denoise", "rewrite"):  # retrain's upstream, the same for every method
            run_stage(stage, settings, 2)
        collected = run_stage("preference", settings, 2)
        retrained = run_stage("retrain", settings, 2)
        board = run_stage("evaluate", settings, 2).metrics
        candidate = retrained.summary["candidate_version"]
        accuracy = _preference_accuracy(settings, policy, candidate, args.heldout_pairs)
        stats.append({"method": method, **{k: v for k, v in collected.metrics.items() if k != "mean_gap"}})
        rows.append(
            {
                "method": method,
                "version": candidate,
                "dpo_pairs": retrained.metrics["dpo_pairs_trained"],
                "rouge_l": board["candidate_rouge_l"],
                "minilm_sim": board["candidate_minilm_sim"],
                "sft_rouge_l": board["start_rouge_l"],
                "sft_minilm_sim": board["start_minilm_sim"],
                "pref_accuracy": accuracy,
            }
        )
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "steps": stats, "heldout": rows}
    result["seconds"] = time.perf_counter() - started
    _report(result, args.out)
    metrics = {
        f"{m}_{r['method'].replace('.', '_')}": r[m] for r in rows for m in ("rouge_l", "minilm_sim", "pref_accuracy")
    }
    log_bench_run("preference", result["args"], metrics, args.out, args.mlflow_dir)
    return result


def _params(args, name: str, collection: dict, dpo: dict, sft_steps: int):
    return project_settings(
        args.work,
        name,
        {
            "preference": {"prompts_per_turn": args.prompts, **collection},
            # the SFT'd policy every method starts from: synthetic then human titles in one retrain, no refine stage
            "refine": {"max_steps": 0},
            "retrain": {
                "sft": {"max_steps": sft_steps, "human_items_per_turn": 32},
                "dpo": {"max_steps": args.dpo_steps, **dpo},
            },
            "evaluate": {"items": args.heldout},
            "annotate": {"items_per_turn": args.turn1_items if name == "turn1" else 8},  # turn 2 trains no SFT
            "data": {"probe_items": 0},  # the dataset-quality probe measures nothing this bench compares
            "skip": ["rewrite"],  # retrain reads its (empty) retrieval feedback; the bench compares caption pairs
        }
        | ({} if args.context_docs is None else {"context": {"docs": args.context_docs}}),
    )


def _make_champion(settings, version: int):
    from stores import tracking
    from stores.registry import CHAMPION, Registry

    experiment = tracking.configure(settings.path("mlflow"), settings.experiment)
    registry = Registry(settings.model.registry_name, experiment, settings.path("models"))
    registry.set_alias(CHAMPION, version)
    return registry.get(version)


def _preference_accuracy(settings, policy, candidate_version: int, count: int) -> float:
    """Share of held-out (human title ≻ policy sample) pairs the candidate's implicit reward ranks right."""
    from stores import tracking
    from stores.registry import Registry
    from stores.store import Store
    from tasks.config import Sampling
    from tasks.prompts import prompt_messages
    from tasks.runner import cached_llm
    from tasks.stage import derive_seed, seeded_order, with_fields

    experiment = tracking.configure(settings.path("mlflow"), settings.experiment)
    candidate = Registry(settings.model.registry_name, experiment, settings.path("models")).get(candidate_version)
    with Store.open(settings.path("store")) as store:
        items = with_fields(store.read("items"))
        heldout = seeded_order(items[items["split"] == "heldout"], settings.seed)
        heldout = heldout.iloc[settings.evaluate.items : settings.evaluate.items + count]  # after the scoreboard slice
        prompts = [prompt_messages(item, settings.task) for item in heldout.to_dict("records")]
        sampling = Sampling(temperature=1.0, top_p=0.95, max_new_tokens=32)
        seeds = [derive_seed(settings.seed, "heldout-pairs", i) for i in heldout["item_id"]]
        rejected = [
            g.text.strip() for g in cached_llm(settings, store, policy).generate(prompts, sampling, seeds, "pairs")
        ]
        chosen = list(heldout["reference"])
        logps = {}
        for name, model in (("ref", policy), ("policy", candidate)):
            llm = cached_llm(settings, store, model)
            both = llm.score(prompts + prompts, chosen + rejected, desc=f"implicit reward {name}")
            logps[name] = np.array([sum(s.token_logprobs) for s in both])
    reward = logps["policy"] - logps["ref"]
    return float(np.mean(reward[:count] > reward[count:]))


def _report(result: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    steps = Table(title="Four-step collection: counts per step (turn 2, each method's params)")
    methods = [r["method"] for r in result["steps"]]
    for column in ["count", *methods]:
        steps.add_column(column, justify="left" if column == "count" else "right")
    for key in [k for k in result["steps"][0] if k != "method"] if result["steps"] else []:
        steps.add_row(key.replace("_", " "), *(f"{r[key]:g}" for r in result["steps"]))
    console.print(steps)
    board = Table(title="Held-out after DPO (same SFT'd start v2, same steps and seed)")
    for column in ("method", "version", "DPO pairs", "ROUGE-L", "MiniLM sim", "Δ ROUGE-L vs v2", "pref. accuracy"):
        board.add_column(column, justify="left" if column == "method" else "right")
    for r in result["heldout"]:
        board.add_row(
            r["method"],
            f"v{r['version']}",
            str(r["dpo_pairs"]),
            f"{r['rouge_l']:.4f}",
            f"{r['minilm_sim']:.4f}",
            f"{r['rouge_l'] - r['sft_rouge_l']:+.4f}",
            f"{r['pref_accuracy']:.3f}",
        )
    if result["heldout"]:
        first = result["heldout"][0]
        board.add_row("(v2: SFT only)", "", "", f"{first['sft_rouge_l']:.4f}", f"{first['sft_minilm_sim']:.4f}", "", "")
    console.print(board)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
