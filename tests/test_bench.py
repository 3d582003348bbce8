"""Every bench script runs end to end on tiny params (the real numbers come from the full runs), so none can break
unnoticed; a new script without a smoke entry here fails the coverage test."""

import json
import subprocess
import sys

import pytest

from flows.allocator import tcmalloc_library
from tests.project import REPO

pytestmark = pytest.mark.integration


def test_noise_control_bench_smoke(tmp_path):
    out = tmp_path / "noise_control.json"
    args = [
        "--items",
        "12",
        "--rates",
        "0.25",
        "--refine-steps",
        "1",
        "--downstream-items",
        "8",
        "--steps",
        "1",
        "--heldout",
        "2",
        "--trusted-items",
        "6",
        "--out",
        str(out),
        "--mlflow-dir",
        str(tmp_path / "mlflow"),
    ]
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "noise_control.py"), *args],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    methods = {"adatailr", "none", "tailr", "small_loss", "gmm"}
    assert {r["method"] for r in result["detection"]} == methods
    assert all(0 <= r["auroc"] <= 1 for r in result["detection"] if r["method"] != "none")
    assert {r["score"] for r in result["detection"]} == {
        "nll",
        "pmi",
        "content",
        "contrast",
        "fitted",
        "fitted_without_contrast",
        "fitted_with_detail",
    }
    assert {r["corruption"] for r in result["detection"]} == {"easy", "neighbour", "detail"}
    assert {r["method"] for r in result["downstream"]} == methods | {"(starting model)", "adatailr+fitted"}


@pytest.mark.parametrize(
    "bench, args",
    [
        ("scale", ["--sizes", "300", "1200"]),
        (
            "generation",
            ["--prompts", "4", "--baseline-prompts", "2", "--max-new-tokens", "8", "--best-of", "2", "--no-vllm"],
        ),
        ("retrieval_speed", ["--rewrite-queries", "4"]),
        ("dpo", ["--pairs", "2", "--epochs", "2"]),
    ],
)
def test_performance_benches_run_and_report_their_ratios(tmp_path, bench, args):
    out = tmp_path / f"{bench}.json"
    extra = ["--work", str(tmp_path / "work"), "--out", str(out), "--mlflow-dir", str(tmp_path / "mlflow")]
    command = [sys.executable, str(REPO / "bench" / f"{bench}.py"), *args, *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    from bench.all import headlines

    rows = headlines({bench: result})
    assert rows and all(measured for _, measured, _ in rows)


def test_training_bench_times_the_stages_trainer_and_profiles_it(tmp_path):
    out = tmp_path / "training.json"
    extra = ["--work", str(tmp_path / "work"), "--out", str(out), "--mlflow-dir", str(tmp_path / "mlflow")]
    chosen = ["--rows", "default", "activation checkpointing", "glibc malloc"]
    command = [sys.executable, str(REPO / "bench" / "training.py"), "--steps", "1", "--profile", *chosen, *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert {"default", "activation checkpointing"} <= rows.keys()
    # run as a script it preloads tcmalloc as the flywheel command does, and times glibc's malloc in a child beside it
    assert result["allocator"] == ("tcmalloc" if tcmalloc_library() else "glibc")
    assert ("glibc malloc" in rows) == (result["allocator"] == "tcmalloc")
    assert all(len(r["step_seconds"]) == r["steps"] == 1 and r["gflop_s"] > 0 for r in rows.values())
    assert rows["default"]["top_ops"] and rows["activation checkpointing"]["activation_checkpointing"]
    if rows["default"]["bf16"]:  # bf16 matmuls go to oneDNN (float32 ones to MKL, which oneDNN does not log)
        assert any(p.startswith("matmul") and p.endswith(" bf16") for p in result["onednn"]), result["onednn"]


def test_roofline_measures_the_limits_and_the_suite_reports_shares_of_them(tmp_path):
    from bench.all import headlines
    from bench.roofline import Dims, forward_flops, generation_flops

    out = tmp_path / "roofline.json"
    tiny = ["--repeats", "1", "--rows", "16", "512", "--budget-s", "5"]  # a precision slower than 5 s is skipped
    command = [sys.executable, str(REPO / "bench" / "roofline.py"), *tiny]
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    roofline = json.loads(out.read_text())
    assert all(rate > 0 for by_rows in roofline["model_weighted_gflop_s"].values() for rate in by_rows.values())
    dims = Dims(**roofline["dims"])
    # SmolLM2-135M: 30 layers of 576-wide attention (3 KV heads of 64) and a 1536-wide MLP, the tied 49152-token head
    assert dims.weight_params == 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) + 576 * 49152
    prefill = forward_flops(dims, 0, 100, 1)
    assert generation_flops(dims, [100], [1]) == prefill and generation_flops(dims, [100], [3]) > prefill
    generation = {"generation": [{"path": "transformers batched (16)", "gflop_s": 10.0}], "scoring": []}
    training = {"rows": [{"row": "default", "gflop_s": 20.0, "s_per_step": 4.0}]}
    rows = headlines({"roofline": roofline, "generation": generation, "training": training})
    share = next(measured for figure, measured, _ in rows if figure.startswith("generation transformers batched"))
    assert share.endswith("(10 GFLOP/s)")
    step = next((figure, measured) for figure, measured, _ in rows if figure.startswith("SFT step, default"))
    limit = max(by_rows.get("512", 0) for by_rows in roofline["model_weighted_gflop_s"].values())
    assert f"({limit:.0f} GFLOP/s" in step[0] and step[1] == f"{20 / limit:.0%} (20 GFLOP/s, 4.0 s/step)"


QUALITY_BENCHES = {
    "preference": [
        "--methods", "plain", "tso", "--prompts", "2", "--dpo-steps", "1", "--sft-steps", "1",
        "--heldout", "2", "--heldout-pairs", "2", "--turn1-items", "4", "--context-docs", "0",
    ],
    "retrieval": ["--limit", "3", "--fusion", "rrf", "--depths", "6", "20"],
    "rewrite_feedback": ["--train-queries", "2", "--heldout", "2", "--samples", "2", "--transfer", "2"],
    "data_value": [
        "--human-items", "4", "--refine-steps", "1", "--train-items", "4", "--candidates", "2", "--heldout", "2",
    ],
    "turn": ["--train-items", "2", "--heldout-items", "2", "--context-docs", "0", "--probe-items", "0"],
}  # fmt: skip
SMOKED = {"noise_control", "scale", "generation", "retrieval_speed", "dpo", "training", "roofline", *QUALITY_BENCHES}


@pytest.mark.parametrize("bench, args", list(QUALITY_BENCHES.items()))
def test_quality_and_turn_benches_run(tmp_path, bench, args):
    out = tmp_path / f"{bench}.json"
    extra = ["--out", str(out), "--work", str(tmp_path / "work")]
    extra += [] if bench == "turn" else ["--mlflow-dir", str(tmp_path / "mlflow")]
    command = [sys.executable, str(REPO / "bench" / f"{bench}.py"), *args, *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text())


def test_every_bench_script_has_a_smoke_run():
    scripts = {p.stem for p in (REPO / "bench").glob("*.py")} - {"all", "common", "__init__"}
    assert scripts == SMOKED, f"bench scripts without a smoke run: {scripts - SMOKED}"
