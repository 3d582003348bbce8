"""Kill -9 at a random point of every stage that calls the model, then rerun it: the finished turn's tables equal an
uninterrupted run's, no row is duplicated, and every model call committed before the kill is served from the cache.
Slow (two whole small turns, one process per stage): `make test-slow`; the default run kills `annotate` only
(tests/test_reliability.py). FLYWHEEL_KILL_SEED picks the kill points (printed on failure)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from tests.project import REPO, write_params

pytestmark = pytest.mark.slow
SEED = int(os.environ.get("FLYWHEEL_KILL_SEED", "7"))
VOLATILE = {"run_id", "created_at"}  # lineage that names the process, not the content


def _stage(params: Path, stage: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--params", str(params), "stage", stage],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done, time.monotonic() - started


def _calls(done: subprocess.CompletedProcess) -> int:
    found = re.search(r"(\d+) LLM calls", done.stdout)
    return int(found.group(1)) if found else 0


def _cache_rows(store: Path) -> dict[str, int]:
    with duckdb.connect(str(store), read_only=True) as con:
        tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "llm_calls" not in tables:  # no model stage has run yet
            return {}
        return dict(con.execute("SELECT kind, count(*) FROM llm_calls GROUP BY kind").fetchall())


def _tables(store: Path) -> dict:
    with duckdb.connect(str(store), read_only=True) as con:
        query = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"  # not the FTS index
        names = [r[0] for r in con.execute(query).fetchall()]
        frames = {}
        for name in sorted(set(names) - {"llm_calls", "stage_runs"}):
            frame = con.execute(f"SELECT * FROM {name}").df()
            frame = frame.drop(columns=[c for c in frame.columns if c in VOLATILE])
            frame = frame.map(lambda v: tuple(v) if isinstance(v, (list, np.ndarray)) else v)  # list columns
            frames[name] = frame.sort_values(list(frame.columns)[:3]).reset_index(drop=True)
        return frames


def test_kill_9_at_a_random_point_of_every_model_stage(tmp_path):
    from tasks.runner import STAGES

    rng = random.Random(SEED)
    small = {"context": {"docs": 0}, "model": {"batch_size": 1}}  # several committed chunks per stage (4 rows each)
    clean, killed = (write_params(_folder(tmp_path / n), small) for n in ("clean", "killed"))
    seconds, clean_calls = {}, {}
    for stage in STAGES:
        done, seconds[stage] = _stage(clean, stage)
        clean_calls[stage] = _calls(done)

    store = killed.parent / "data" / "flywheel.duckdb"
    report = []
    for stage, definition in STAGES.items():
        if definition.uses_model:
            before = _cache_rows(store)
            proc = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "--params", str(killed), "stage", stage],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            at = rng.uniform(0.5, 0.95) * seconds[stage]  # the first ~8 s of a stage process are imports
            try:
                proc.wait(timeout=at)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            # a stage that finished before its kill point was not tested: that is a failure, not a pass
            assert proc.returncode == -signal.SIGKILL, f"{stage} ended ({proc.returncode}) before its kill at {at:.1f}s"
            after = _cache_rows(store)
            added = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in after}
            committed = added.get("generate", 0) or added.get("score", 0)  # calls the killed process surely made
            done, _ = _stage(killed, stage)
            report.append(
                f"{stage}: killed at {at:.1f}s, {committed} committed, rerun {_calls(done)}/{clean_calls[stage]}"
            )
            assert _calls(done) <= clean_calls[stage] - committed, report
        else:
            _stage(killed, stage)

    print("\n".join(report))
    clean_tables, killed_tables = _tables(clean.parent / "data" / "flywheel.duckdb"), _tables(store)
    assert clean_tables.keys() == killed_tables.keys()
    for name, frame in killed_tables.items():
        assert not frame.duplicated().any(), f"{name}: duplicated rows ({report})"
        assert frame.equals(clean_tables[name]), f"{name} differs from the uninterrupted run ({report})"
    print(f"{len(killed_tables)} tables equal to the uninterrupted run's, no duplicated row")


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
