"""The CLI turns user mistakes into one clear line and exit status 2, never a traceback; a stage says one line."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from flows.allocator import ALLOCATOR_ENV, system_allocator_env, tcmalloc_library
from flows.cli import main
from tests.project import write_params


def test_a_bad_params_file(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text("evaluate: {items: 0}\n")
    assert main(["--params", str(path), "stage", "ingest"]) == 2
    assert "evaluate.items" in capsys.readouterr().err


def test_an_unknown_stage(tmp_path, capsys):
    assert main(["--params", str(write_params(tmp_path)), "stage", "anotate"]) == 2
    assert "unknown stage 'anotate'" in capsys.readouterr().err


def test_a_stage_before_its_upstream(tmp_path, capsys):
    assert main(["--params", str(write_params(tmp_path)), "stage", "denoise"]) == 2
    error = capsys.readouterr().err
    assert "needs ingest, context, refine, annotate first" in error and "flywheel stage ingest --turn 1" in error


def test_a_missing_items_file(tmp_path, capsys):
    params = write_params(tmp_path, {"data": {"source": "no-such-items.jsonl"}})
    assert main(["--params", str(params), "stage", "ingest"]) == 2
    assert "no-such-items.jsonl is not a file" in capsys.readouterr().err


def test_the_summary_of_a_turn_that_never_ran(tmp_path, capsys):
    assert main(["--params", str(write_params(tmp_path)), "summary", "--turn", "3"]) == 2
    assert "turn 3 has not started" in capsys.readouterr().err


def test_denoise_score_on_any_items_file(tmp_path, capsys):
    import json

    rows = [
        {"item_id": item_id, "reference": reference, "fields": {field: text}}
        for item_id, reference, field, text in [
            ("a", "Graph neural networks: a practical guide", "abstract", "A tutorial on GNNs."),
            ("b", "Knowledge graphs from language models", "comment", "LMs as open KGs."),
            ("c", "Sentence embeddings for retrieval", "comment", "Dense retrieval with SBERT."),
            ("d", "Weak supervision at industrial scale", "abstract", "Snorkel DryBell."),
        ]
    ]
    rows[1]["annotation"] = "zebra, marmalade, quantum"
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"item_id": "e"}\n')
    out = tmp_path / "scored.jsonl"
    assert (
        main(
            [
                "--params",
                str(write_params(tmp_path)),
                "denoise",
                "score",
                "--items",
                str(items),
                "--out",
                str(out),
                "--method",
                "small_loss",
                "--score",
                "nll",
            ]
        )
        == 0
    )
    assert "4 scored" in capsys.readouterr().out
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["item_id"] for r in scored] == ["a", "b", "c", "d"]
    assert scored[1]["annotation"] == "zebra, marmalade, quantum" and scored[0]["annotation"] == rows[0]["reference"]
    assert all(r["method"] == "small_loss" and r["noise_score"] > 0 for r in scored)
    noisiest = max(scored, key=lambda r: r["noise_score"])
    assert [r["item_id"] for r in scored if not r["kept"]] == [noisiest["item_id"]]  # small_loss drops the top 20%
    assert "threshold" in noisiest["reason"]
    [reject] = [json.loads(line) for line in out.with_suffix(".rejects.jsonl").read_text().splitlines()]
    assert "items.jsonl line 5" in reject["reason"] and "field reference" in reject["reason"]

    params = write_params(tmp_path, {"denoise": {"trusted_items": 6}})  # the fit's trusted pairs: the project's own
    assert main(["--params", str(params), "denoise", "score", "--items", str(items), "--out", str(out)]) == 0
    fitted = [json.loads(line) for line in out.read_text().splitlines()]
    # by default the trusted fit's log(LR wrong item + LR unfinished): finite, and it tells the annotations apart
    assert all(math.isfinite(r["noise_score"]) for r in fitted) and len({r["noise_score"] for r in fitted}) > 1


def test_rag_eval_on_a_small_beir_benchmark(tmp_path, capsys):
    """The packaged model rewrites two queries with every strategy; every config gets all five metrics."""
    import json

    docs = [
        ("gnn", "Graph neural networks", "Message passing over graphs for node classification."),
        ("kg", "Knowledge graphs", "Entities and relations; language models as knowledge bases."),
        ("pasta", "Cooking pasta", "Fresh pasta at home with flour and eggs."),
        ("rag", "Retrieval augmented generation", "Retrieving documents to ground answers of language models."),
    ]
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs)
    )
    queries = [("q1", "How do neural networks learn on graph data?"), ("q2", "grounding LLM answers in documents")]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries))
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tgnn\t1\nq2\trag\t1\nq2\tkg\t1\n")
    files = [
        f"--{name}={tmp_path / f}"
        for name, f in (("corpus", "corpus.jsonl"), ("queries", "queries.jsonl"), ("qrels", "qrels.tsv"))
    ]
    out = tmp_path / "metrics.json"
    assert main(["--params", str(write_params(tmp_path)), "rag", "eval", *files, f"--out={out}"]) == 0
    result = json.loads(out.read_text())
    configs = {row["config"]: row for row in result["configs"]}
    assert list(configs) == ["original", "gqr", "kwr", "par", "cce", "all", "adaptive"]
    assert all(0 <= row[m] <= 1 for row in configs.values() for m in ("p@5", "hit@5", "recall@10", "ndcg@10", "mrr@10"))
    assert configs["original"]["rewrites_per_query"] == 0 and 0 < configs["all"]["rewrites_per_query"] <= 4
    assert configs["adaptive"]["rewrites_per_query"] <= configs["all"]["rewrites_per_query"]
    assert "DMQR-RAG on 2 queries" in capsys.readouterr().out
    (tmp_path / "qrels.tsv").write_text("q1\tnope\t1\n")
    assert main(["--params", str(write_params(tmp_path)), "rag", "eval", *files, f"--out={out}"]) == 2
    assert "qrels.tsv:1: corpus-id 'nope' is not in corpus.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("name, line", [("semanlink", "314 queries, 433 documents"), ("perovskite", "254 queries")])
def test_the_bundled_benchmarks_are_written_in_beir_layout_for_rag_eval(tmp_path, capsys, name, line):
    out = tmp_path / name
    assert main(["--params", str(write_params(tmp_path)), "rag", name, f"--out={out}"]) == 0
    assert line in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "qrels.tsv", "queries.jsonl"]


def test_a_stage_says_one_line_and_nothing_else_unless_verbose(tmp_path):
    params = str(write_params(tmp_path))

    def stage(*flags):
        command = [sys.executable, "-m", "flows.cli", *flags, "--params", params, "stage", "ingest"]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)

    quiet = stage()
    assert quiet.stdout.startswith("ingest     turn 1: ") and quiet.stdout.count("\n") == 1
    assert quiet.stderr == ""  # no library logs or warnings (the first run creates the MLflow tables)
    assert "[cached]" in stage("--verbose").stdout


def test_the_command_runs_under_tcmalloc_unless_told_not_to(monkeypatch):
    if tcmalloc_library() is None:
        pytest.skip("no tcmalloc on this machine (Debian's libtcmalloc-minimal4; `make setup` installs it as root)")
    flywheel = Path(sys.executable).parent / "flywheel"

    def libraries(**env) -> str:  # the dynamic loader's log of the libraries each process it runs initialises
        command = [str(flywheel), "--help"]
        done = subprocess.run(command, env=base | {"LD_DEBUG": "libs", **env}, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("usage: flywheel"), done.stderr[-2000:]
        return done.stderr

    base = {k: v for k, v in system_allocator_env().items() if k != ALLOCATOR_ENV}
    default, declined = libraries(), libraries(**{ALLOCATOR_ENV: "system"})
    assert "init: " in default and "libtcmalloc_minimal" in default
    assert "init: " in declined and "libtcmalloc_minimal" not in declined
    monkeypatch.setenv("LD_PRELOAD", "/opt/libother.so /usr/lib/libtcmalloc_minimal.so.4:/opt/libmore.so")
    assert system_allocator_env()["LD_PRELOAD"] == "/opt/libother.so /opt/libmore.so"  # the user's other preloads


def test_the_rewrite_line_reads_tag_precision_whatever_the_metrics_order():
    """A stage found finished reads its metrics back from the store in key order, where
    `feedback_rewrites_beating_original` comes first: the line showed it (0.00) as the original query's precision."""
    from flows.summary import stage_note

    metrics = {"tag_precision_at_5_original": 0.54, "tag_precision_at_5_rewritten": 0.56, "rewrites_per_query": 1.1}
    metrics["feedback_rewrites_beating_original"] = 0
    for ordered in (metrics, dict(sorted(metrics.items()))):
        result = {"stage": "rewrite", "metrics": ordered, "summary": {}}
        assert stage_note(result) == "tag precision 0.54 (original) → 0.56 (DMQR pool, 1.1 rewrites/query)"
