"""Prompts and model outputs are data: the code that handles them never evaluates or shells out, and every server the
flywheel starts binds the loopback interface unless told otherwise."""

from __future__ import annotations

import re

from tests.project import REPO

FORBIDDEN = re.compile(
    r"(?<![.\w])eval\(|(?<![.\w])exec\(|shell=True|os\.system\(|os\.popen\(|yaml\.load\(|pickle\.loads?\("
)


def test_no_code_path_evaluates_text_or_uses_a_shell():
    sources = [p for folder in ("flows", "tasks", "stores", "bench") for p in (REPO / folder).rglob("*.py")]
    assert len(sources) > 40
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if FORBIDDEN.search(line)
    ]
    assert found == []


def test_servers_bind_loopback_by_default():
    from tasks.config import Settings

    assert Settings().model.server.host == "127.0.0.1"
    assert "--host 127.0.0.1" in (REPO / "Makefile").read_text()
