"""The `flywheel` command.

flywheel run [--turns N] [--first-turn K]   N turns through the Prefect flow (from the next unfinished one), summary
flywheel experiment FILE                    arms x turns from an experiment file, then the comparison report
flywheel stage NAME [--turn K]              one stage (what each dvc.yaml cmd runs)
flywheel summary [--turn K]                 the summary of a finished turn, from the store
flywheel publish [--turn K]                 a finished turn's data as a DVC version, pushed (after `dvc repro`)
flywheel checkout --turn K                  restore turn K's published data folder from the DVC cache or remote
flywheel export --turn K --out DIR          turn K's SFT/DPO training sets as a Hugging Face dataset with its card
flywheel setup                              register the packaged model as champion (done on first use anyway)
flywheel denoise score --items F --out F    noise scores + keep/drop for any items file [--method M] [--score S]
flywheel rag eval --corpus F --queries F --qrels F --out F   DMQR-RAG on any BEIR-layout benchmark
flywheel rag semanlink --out DIR            write the bundled Semanlink arXiv->tags benchmark in BEIR layout
flywheel rag perovskite --out DIR           write the bundled perovskite title->abstract benchmark (BEIR layout)
flywheel serve-local                        start Prefect + MLflow servers and the cpu/gpu workers (127.0.0.1)
flywheel deploy [--cron C] [--turns N]      create the stage deployments and the scheduled flywheel deployment
flywheel trigger [--turns N]                run the scheduled deployment now, on the workers, and wait for it
flywheel stop                               stop what serve-local started, by PID
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import stores  # noqa: F401  (offline, no-telemetry environment before anything heavy)
from flows.allocator import preload_tcmalloc
from tasks.config import load_settings
from tasks.errors import FlywheelError


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `flywheel` command itself (tests call main with their arguments)
        preload_tcmalloc()
    parser = argparse.ArgumentParser(prog="flywheel", description="A data flywheel for LLM post-training data.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--verbose", action="store_true", help="library warnings, logs and per-step progress bars")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run N flywheel turns through Prefect")
    run.add_argument("--turns", type=int, default=1)
    run.add_argument("--first-turn", type=int, default=None, help="default: the next unfinished turn")
    experiment = commands.add_parser("experiment", help="run an experiment file's arms side by side over turns")
    experiment.add_argument("file", type=Path, help="experiment YAML (e.g. experiments/ablation.yaml)")
    experiment.add_argument("--report-only", action="store_true", help="report the finished turns; run nothing")
    experiment.add_argument("--arms", nargs="+", default=None, help="run only these arms (the report shows all)")
    stage = commands.add_parser("stage", help="run one stage of one turn (idempotent)")
    stage.add_argument("name")
    stage.add_argument("--turn", type=int, default=None, help="default: `turn` in the params file")
    summary = commands.add_parser("summary", help="print the summary of a finished turn")
    summary.add_argument("--turn", type=int, default=1)
    publish = commands.add_parser("publish", help="version a finished turn's data with DVC and push it")
    publish.add_argument("--turn", type=int, default=None, help="default: `turn` in the params file")
    checkout = commands.add_parser("checkout", help="restore a published turn's data folder, byte for byte")
    checkout.add_argument("--turn", type=int, required=True)
    export = commands.add_parser("export", help="write a turn's training sets as a Hugging Face dataset folder")
    export.add_argument("--turn", type=int, required=True)
    export.add_argument("--out", type=Path, required=True, help="folder for the sft/dpo Parquet files and README.md")
    export.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also upload it (needs network, token)")
    commands.add_parser("setup", help="register the packaged base model (idempotent)")
    denoise = commands.add_parser("denoise", help="noise control on any items file").add_subparsers(
        dest="action", required=True
    )
    score = denoise.add_parser("score", help="noise-score the annotations of an items JSONL file with the champion")
    score.add_argument("--items", type=Path, required=True, help="JSONL in the item schema, optional `annotation`")
    score.add_argument("--out", type=Path, required=True, help="JSONL with a noise score and a keep/drop per line")
    score.add_argument("--method", default=None, help="noise-control method (default: denoise.method in params)")
    score.add_argument(
        "--score", default="fitted", help="nll | pmi | content | contrast | fitted (default: the trusted fit)"
    )
    rag = commands.add_parser("rag", help="DMQR-RAG retrieval evaluation").add_subparsers(dest="action", required=True)
    rag_eval = rag.add_parser("eval", help="evaluate query-rewriting configs on a BEIR-layout benchmark")
    rag_eval.add_argument("--corpus", type=Path, required=True, help="corpus.jsonl: _id, title, text")
    rag_eval.add_argument("--queries", type=Path, required=True, help="queries.jsonl: _id, text")
    rag_eval.add_argument("--qrels", type=Path, required=True, help="qrels.tsv: query-id, corpus-id, score")
    rag_eval.add_argument("--out", type=Path, required=True, help="metrics JSON")
    rag_eval.add_argument("--strategies", nargs="+", default=None, help="default: rewrite.strategies in params")
    rag_eval.add_argument("--fusion", choices=("rrf", "rerank"), default=None, help="default: rewrite.fusion")
    rag_eval.add_argument("--limit", type=int, default=None, help="only the first N queries (sorted by id)")
    for name, what in (("semanlink", "Semanlink arXiv->tags"), ("perovskite", "perovskite title->abstract")):
        rag.add_parser(name, help=f"write the bundled {what} benchmark").add_argument("--out", type=Path, required=True)
    commands.add_parser("serve-local", help="start Prefect and MLflow servers and both workers on 127.0.0.1")
    deploy = commands.add_parser("deploy", help="create the Prefect deployments (stage pools + scheduled turns)")
    deploy.add_argument("--cron", default=None, help='schedule of the flywheel deployment, e.g. "0 3 * * *"')
    deploy.add_argument("--turns", type=int, default=1, help="turns per scheduled run")
    trigger = commands.add_parser("trigger", help="run the flywheel deployment now and wait for it")
    trigger.add_argument("--turns", type=int, default=None, help="default: the deployment's")
    commands.add_parser("stop", help="stop the services serve-local started")
    args = parser.parse_args(argv)
    if args.verbose:
        from stores.env import set_verbose

        set_verbose()

    try:
        _dispatch(args)
    except FlywheelError as error:
        print(f"flywheel: {error}", file=sys.stderr)
        return 2
    return 0


def _dispatch(args: argparse.Namespace) -> None:
    from flows.summary import print_turn
    from stores import tracking

    settings = load_settings(args.params)

    def ui() -> str:
        experiment_id = tracking.configure(settings.path("mlflow"), settings.experiment)
        return tracking.ui_command(settings.path("mlflow"), experiment_id)

    if args.command == "run":
        from flows.turn import flywheel
        from tasks.publish import version_note

        started = time.perf_counter()
        turns = flywheel(turns=args.turns, first_turn=args.first_turn, params=str(Path(args.params).resolve()))
        for results in turns:
            print_turn(results, ui(), version_note(settings, results[-1]["turn"]))
        done = ", ".join(str(results[-1]["turn"]) for results in turns)
        print(f"turn(s) {done} in {time.perf_counter() - started:.0f} s")
    elif args.command == "experiment":
        from flows.experiment import run_experiment

        report = run_experiment(Path(args.params), args.file, run=not args.report_only, only=args.arms)
        print(report.markdown_path.read_text())
        print(f"report: {report.markdown_path}\ncurves: {report.plot_path}\nMLflow UI: {ui()}")
    elif args.command == "stage":
        from dataclasses import asdict

        from flows.summary import stage_line
        from tasks.runner import run_stage

        print(stage_line(asdict(run_stage(args.name, settings, args.turn or settings.turn))))
    elif args.command == "summary":
        from tasks.publish import version_note
        from tasks.runner import recorded_turn

        print_turn(recorded_turn(settings, args.turn), ui(), version_note(settings, args.turn))
    elif args.command == "publish":
        from tasks.publish import publish_turn

        print(publish_turn(settings, args.turn or settings.turn).line())
    elif args.command == "checkout":
        from tasks.publish import checkout_turn

        version = checkout_turn(settings, args.turn)
        folder = version.dvc_file.removesuffix(".dvc")
        print(f"turn {args.turn}: {folder} restored ({version.md5}, {version.files} files)")
    elif args.command == "export":
        from tasks.publish import export_dataset

        print(export_dataset(settings, args.turn, args.out, args.push_to_hub))
    elif args.command == "denoise":
        from tasks.denoise.score_file import score_file

        counts = score_file(settings, args.items, args.out, args.method, args.score)
        print(
            f"{counts['scored']} scored, {counts['dropped']} dropped, {counts['rejected']} rejected lines; "
            f"gamma {counts['gamma']:.3f} -> {args.out}"
        )
    elif args.command == "rag" and args.action != "eval":
        from tasks.rewrite.beir import bundled_to_beir

        counts = bundled_to_beir(args.action, args.out)
        print(", ".join(f"{v} {k}" for k, v in counts.items()) + f" -> {args.out}")
    elif args.command == "rag":
        from rich.console import Console

        from tasks.rewrite.rag_eval import rag_eval_files, rag_table

        result = rag_eval_files(
            settings, args.corpus, args.queries, args.qrels, args.out, args.strategies, args.fusion, args.limit
        )
        Console(width=140).print(rag_table(result))
        print(f"wrote {args.out}")
    elif args.command in ("serve-local", "deploy", "trigger", "stop"):
        _services_command(args, settings)
    elif args.command == "setup":
        from tasks.runner import register_base_model

        print(f"champion: {register_base_model(settings).label}")


def _services_command(args: argparse.Namespace, settings) -> None:
    import os

    from flows import services
    from stores import tracking

    def runs_page(mlflow_url: str) -> str:
        return tracking.runs_page(mlflow_url, tracking.experiment_on(mlflow_url, settings.experiment))

    if args.command == "serve-local":
        started = services.start_services(settings)
        print(f"Prefect UI: {started.prefect_api_url.removesuffix('/api')}")
        print(f"MLflow UI:  {runs_page(started.mlflow_url)}")
        print(f"workers: {services.CPU_POOL}, {services.GPU_POOL}; PIDs and logs in {services.services_file(settings)}")
        print("next: `flywheel deploy`, then `flywheel trigger` (or wait for the schedule); `flywheel stop` ends it")
        return
    running = services.load_services(settings)
    if args.command == "stop":
        print("stopped: " + ", ".join(services.stop_services(running)))
        services.services_file(settings).unlink()
        return
    os.environ.update(running.environment())  # before Prefect is imported: its client reads these
    if args.command == "deploy":
        from flows.deploy import deploy

        names = deploy(Path(args.params), args.turns, args.cron)
        schedule = f"; flywheel/scheduled runs at cron {args.cron!r}" if args.cron else " (no schedule)"
        print(f"deployments: {', '.join(names)}{schedule}")
    else:
        from flows.deploy import trigger
        from flows.summary import print_turn
        from tasks.publish import version_note

        ui = f"open {runs_page(running.mlflow_url)}"
        for results in trigger(args.turns):
            print_turn(results, ui, version_note(settings, results[-1]["turn"]))


if __name__ == "__main__":
    sys.exit(main())
