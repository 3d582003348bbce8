"""Bad input, generated: every edge that reads a user's file either accepts it or answers with a clear error naming
the file and line (or a quarantine row with the reason), never a traceback from deep inside, never a silent drop.
Each property tries `EXAMPLES` generated cases (hypothesis), on top of the hand-made fixtures in the stage tests."""

from __future__ import annotations

import json
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.config import ConfigError, load_settings
from tasks.errors import InputError
from tasks.ingest.ingest import ingest_jsonl
from tasks.preference.label_pairs import read_labels
from tasks.rewrite.beir import load_beir

EXAMPLES = 150
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.text(string.ascii_letters + " ", min_size=1000, max_size=1001),  # long text
    st.just(""),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
item_keys = st.sampled_from(["item_id", "reference", "fields", "tags", "source", "extra", "annotation", "title"])
field_maps = st.dictionaries(st.sampled_from(["abstract", "comment", "Bad key", "reference", "q"]), values, max_size=3)
objects = st.dictionaries(item_keys, values | field_maps, max_size=7)
lines = st.one_of(
    objects.map(json.dumps).map(str.encode),
    st.binary(max_size=40),  # invalid UTF-8, stray bytes, nothing
    st.sampled_from([b"[1, 2]", b'"a string"', b"{not json", b"null", b"   "]),
)


@PROPERTY
@given(st.lists(lines, max_size=12))
def test_items_files_every_line_is_a_record_or_a_reject_with_its_line(tmp_path, raw_lines):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ").replace(b"\r", b" ") for line in raw_lines))
    records, rejects = ingest_jsonl(path)
    meaningful = [n for n, raw in enumerate(path.read_bytes().splitlines(), start=1) if raw.strip()]
    assert len(records) + len(rejects) <= len(meaningful)  # lines of only whitespace are skipped, nothing else
    assert all(r["reason"].startswith(f"items.jsonl line {r['row_key'].split()[-1]}: ") for r in rejects)
    assert all(r["item_id"] and r["reference"] and any(r["fields"].values()) for r in records)
    assert not any(set(r["fields"]) & {"reference", "tags", "item_id"} for r in records)


@PROPERTY
@given(
    st.lists(objects.map(json.dumps) | st.text(max_size=20), max_size=6),
    st.lists(objects.map(json.dumps) | st.text(max_size=20), max_size=6),
    st.lists(st.text(string.printable.replace("\n", "").replace("\r", ""), max_size=20), max_size=6),
)
def test_beir_files_load_or_fail_naming_the_file(tmp_path, corpus, queries, qrels):
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries), ("qrels.tsv", qrels)):
        (tmp_path / name).write_text("\n".join(row.replace("\n", " ") for row in rows))
    try:
        bench = load_beir(tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl", tmp_path / "qrels.tsv")
    except InputError as error:
        assert str(error).startswith(str(tmp_path))
    else:
        assert all(doc in bench.corpus for judged in bench.qrels.values() for doc in judged)


@PROPERTY
@given(st.lists(objects.map(json.dumps) | st.text(max_size=20), max_size=6))
def test_label_files_load_or_fail_naming_the_line(tmp_path, rows):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(row.replace("\n", " ") for row in rows))
    try:
        labels = read_labels(path)
    except InputError as error:
        assert str(error).startswith(f"{path}:")
    else:
        assert set(labels.values()) <= {"a", "b"}


sections = st.sampled_from(["seed", "data", "model", "annotate", "denoise", "preference", "retrain", "unknown"])
fields = st.sampled_from(["items_per_turn", "method", "max_steps", "seed", "source", "batch_size", "nope", "gamma"])


@PROPERTY
@given(st.dictionaries(sections, values | st.dictionaries(fields, values, max_size=3), max_size=4))
def test_params_files_load_or_fail_naming_the_file(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    try:
        load_settings(path)
    except ConfigError as error:
        assert str(error).startswith(str(path))


pieces = st.sampled_from(list("ab {}:") + ["{abstract}", "{reference}", "{tags}", "{Nope}", "{0}", "{{", "{!r}"])
templates = st.lists(pieces, max_size=6).map("".join)
signal = st.fixed_dictionaries(
    {"field": st.sampled_from(["abstract", "comment", "tags", "context", "reference", "body", "Body"])},
    optional={"label": templates, "clip": st.integers(0, 9000) | st.none(), "join": st.text(max_size=3), "x": values},
)
task_values = {
    "system": templates | values,
    "instruction": templates | values,
    "signals": st.lists(signal, max_size=4) | values,
    "content": st.lists(st.sampled_from(["abstract", "comment", "tags", "body", "reference"]), max_size=3) | values,
    "output": st.sampled_from(["line", "choice", "json"]) | values,
    "choices": st.lists(st.sampled_from(["A", "B", "C D", ""]), max_size=3) | values,
    "metrics": st.lists(st.sampled_from(["rouge_l", "minilm_sim", "exact_match", "bleu"]), max_size=3) | values,
    "scorer": st.sampled_from(["content", "reference", "judge"]) | values,
    "max_field_chars": st.integers(0, 9000) | values,
    "name": st.sampled_from(["caption", "Bad name", "qa"]) | values,
}


@PROPERTY
@given(st.fixed_dictionaries({}, optional=task_values), objects)
def test_task_sections_load_and_render_or_fail_on_one_line_naming_the_file(tmp_path, task, item):
    from tasks.prompts import item_content, prompt_messages

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"task": task}))
    try:
        loaded = load_settings(path).task
    except ConfigError as error:
        assert str(error).startswith(f"{path}: task") and "\n" not in str(error)
        return
    item = {key: value for key, value in item.items() if isinstance(value, str) or key == "tags"}
    item["tags"] = [str(tag) for tag in item.get("tags") or []] if isinstance(item.get("tags"), list) else []
    messages = prompt_messages(item, loaded)
    assert [m["role"] for m in messages] == ["system", "user"] and isinstance(item_content(item, loaded), str)
