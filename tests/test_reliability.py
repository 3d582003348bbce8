"""Faults, for real: kill -9 in the middle of a model stage, a store held by another process, a second run on a busy
store, a store path that cannot exist. Nothing is lost or duplicated and every failure is one clear line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flows.cli import main
from tests.project import write_params

FLYWHEEL = [sys.executable, "-m", "flows.cli"]
REPO = Path(__file__).resolve().parents[1]
SMALL = {"context": {"docs": 0}, "model": {"batch_size": 2}}  # 8 annotations in 4 committed chunks


def _project(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return write_params(folder, SMALL)


def _flywheel(params: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FLYWHEEL, "--params", str(params), *args], cwd=REPO, capture_output=True, text=True, timeout=600, **kwargs
    )


def _content(params: Path):
    from stores.store import Store
    from tasks.config import load_settings

    with Store.open(load_settings(params).path("store")) as store:
        frame = store.read("annotations")
    return frame[["item_id", "candidate", "caption", "mean_logprob"]].sort_values(["item_id", "candidate"])


def test_kill_9_mid_stage_loses_nothing_and_repeats_no_model_call(tmp_path):
    params = _project(tmp_path / "killed")
    for stage in ("ingest", "context"):
        assert _flywheel(params, "stage", stage).returncode == 0
    env = {**os.environ, "FLYWHEEL_PROGRESS": "1"}
    proc = subprocess.Popen(
        [*FLYWHEEL, "--params", str(params), "stage", "annotate"], cwd=REPO, env=env, stderr=subprocess.PIPE
    )
    seen = {"done": 0}

    def watch():
        buffer = b""
        while chunk := proc.stderr.read1(256):
            buffer = (buffer + chunk)[-400:]
            found = re.findall(rb"annotate \(flywheel-policy/v1\):\s+\d+%\|[^|]*\|\s*(\d+)/8", buffer)
            if found:
                seen["done"] = max(seen["done"], int(found[-1]))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline = time.time() + 300
    while seen["done"] < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before_kill = seen["done"]
    assert 2 <= done_before_kill < 8

    rerun = _flywheel(params, "stage", "annotate")
    assert rerun.returncode == 0, rerun.stderr
    calls = int(re.search(r"(\d+) LLM calls", rerun.stdout).group(1))
    assert calls <= 8 - done_before_kill  # every call committed before the kill came from the cache

    clean = _project(tmp_path / "clean")
    for stage in ("ingest", "context", "annotate"):
        assert _flywheel(clean, "stage", stage).returncode == 0
    killed, uninterrupted = _content(params), _content(clean)
    assert len(killed) == 8 and not killed.duplicated(["item_id", "candidate"]).any()
    assert killed.reset_index(drop=True).equals(uninterrupted.reset_index(drop=True))


def _hold(code: str) -> subprocess.Popen:
    """A process that runs `code`, prints 'ready' and then sleeps until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code) + "\nprint('ready', flush=True)\nimport time; time.sleep(600)"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_store_held_by_another_process_is_a_clear_error(tmp_path, capsys):
    params = write_params(tmp_path)
    store = tmp_path / "data" / "flywheel.duckdb"
    store.parent.mkdir(parents=True)
    holder = _hold(f"import duckdb; con = duckdb.connect({str(store)!r})")
    try:
        assert main(["--params", str(params), "stage", "ingest"]) == 2
    finally:
        holder.kill()
        holder.wait()
    error = capsys.readouterr().err
    assert f"cannot open the store at {store}" in error and "another flywheel process" in error
    assert main(["--params", str(params), "stage", "ingest"]) == 0  # and it works once the holder is gone


def test_a_second_run_on_a_busy_store_fails_at_once(tmp_path):
    from stores.errors import StoreError
    from stores.lock import run_lock

    store = tmp_path / "data" / "flywheel.duckdb"
    holder = _hold(f"from stores.lock import run_lock; lock = run_lock({str(store)!r}); lock.__enter__()")
    try:
        with pytest.raises(StoreError, match=rf"in use by a running flywheel \(PID {holder.pid} since"):
            with run_lock(store):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(store):  # the kernel released it with the dead holder
        pass


def test_a_store_path_that_cannot_exist_names_the_path(tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file where the store's folder should be")
    params = write_params(tmp_path, {"paths": {"store": "blocker/flywheel.duckdb"}})
    assert main(["--params", str(params), "stage", "ingest"]) == 2
    assert f"cannot open the store at {tmp_path / 'blocker' / 'flywheel.duckdb'}" in capsys.readouterr().err


def test_a_model_server_that_dies_mid_stage_fails_clearly_and_the_rerun_repeats_nothing(tmp_path, backend, capsys):
    from tasks.config import load_settings
    from tasks.llm.openai_backend import served_name
    from tasks.runner import register_base_model
    from tests.model_server import ModelServer

    server_cfg = {"retries": 2, "backoff_s": 0.01, "concurrency": 2}  # commits every 2 answers
    params = write_params(tmp_path, {**SMALL, "model": {"backend": "vllm", "server": server_cfg}})
    server = ModelServer(backend, served_name(register_base_model(load_settings(params))))
    write_params(tmp_path, {**SMALL, "model": {"backend": "vllm", "server": {**server_cfg, "url": server.url}}})
    try:
        for stage in ("ingest", "context"):
            assert main(["--params", str(params), "stage", stage]) == 0
        server.down_after = 5  # answers 5 requests, then 503 to everything
        assert main(["--params", str(params), "stage", "annotate"]) == 2
        error = capsys.readouterr().err
        assert f"flywheel: model server {server.url}/completions failed 3 times; last: HTTP 503" in error
        server.down_after = None  # the server is back
        assert main(["--params", str(params), "stage", "annotate"]) == 0
        assert "4 LLM calls" in capsys.readouterr().out  # 8 calls: 4 committed before the failure, 1 lost in flight
    finally:
        server.close()
