"""The bundled second task's data: QuaRTz (Tafjord et al., 2019), two-choice science questions about qualitative
relationships, as OpenAI's `evals==3.0.1.post1` ships them (`evals/registry/data/quartz/samples.jsonl`, 3,860
lines; the package is located with `find_spec` and never imported: its dependencies are not installed).

A line is `{"input": [system, user "question\\n\\n A: x\\n B: y"], "ideal": "A"}`; an item is the question, its two
options and the right letter as the reference (a verifiable answer). A question asked twice is one item; one asked
twice with different answers is left out (its reference is not known).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

_QUESTION = re.compile(r"(?s)(?P<question>.+?)\n\n A: (?P<a>.+?)\n B: (?P<b>.+)")


def evals_samples(name: str) -> Path:
    """The samples file of one of the eval sets inside `evals==3.0.1.post1`."""
    spec = importlib.util.find_spec("evals")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package evals==3.0.1.post1 is not installed (make setup installs it with --no-deps)")
    return Path(spec.submodule_search_locations[0]) / "registry" / "data" / name / "samples.jsonl"


def quartz_file() -> Path:
    return evals_samples("quartz")


def ingest_quartz() -> tuple[list[dict], dict]:
    """The questions as item records (fields: question, options; reference: the right letter); returns (records,
    counts of lines, items, repeated and conflicting questions)."""
    lines = quartz_file().read_text().splitlines()
    records: dict[str, dict] = {}
    conflicting: set[str] = set()
    for line in lines:
        sample = json.loads(line)
        asked = _QUESTION.fullmatch(sample["input"][-1]["content"].strip())
        if asked is None:
            raise ValueError(f"{quartz_file()}: a line that is not 'question, A:, B:': {line[:200]}")
        item_id = "qz-" + hashlib.sha1(asked.group(0).encode()).hexdigest()[:12]
        if item_id in records and records[item_id]["reference"] != sample["ideal"]:
            conflicting.add(item_id)
        records.setdefault(
            item_id,
            {
                "item_id": item_id,
                "source": "quartz",
                "reference": sample["ideal"],
                "fields": {
                    "question": " ".join(asked["question"].split()),
                    "options": [f"A: {asked['a'].strip()}", f"B: {asked['b'].strip()}"],
                },
                "tags": [],
            },
        )
    kept = [record for item_id, record in records.items() if item_id not in conflicting]
    counts = {"lines": len(lines), "selected": len(kept), "repeated": len(lines) - len(records)}
    return kept, counts | {"conflicting": len(conflicting)}
