import json

import pytest

from tasks.ingest.ingest import assign_split, ingest_jsonl, ingest_semanlink


def test_bundled_semanlink_items_carry_text_and_a_clean_title():
    records, counts = ingest_semanlink(min_comment_chars=200, min_title_chars=12)
    assert counts == {"bookmarks": 7300, "selected": len(records)}
    arxiv = [r for r in records if r["source"] == "semanlink-arxiv"]
    assert len(arxiv) == 314 and all(r["fields"]["abstract"] for r in arxiv)
    assert all(r["fields"]["abstract"] or len(r["fields"]["comment"]) >= 200 for r in records)
    assert all(set(r["fields"]) == {"abstract", "comment"} for r in records)
    # the reference is the title, "[2010.05234] " stripped
    assert not any(r["reference"].startswith("[") and "]" in r["reference"][:14] for r in arxiv)
    assert len({r["item_id"] for r in records}) == len(records)


def test_splits_are_seeded_stable_and_roughly_sized():
    records, _ = ingest_semanlink(200, 12)
    splits = [assign_split(13, r["item_id"], 0.2, 0.1) for r in records]
    assert splits == [assign_split(13, r["item_id"], 0.2, 0.1) for r in records]
    assert splits != [assign_split(14, r["item_id"], 0.2, 0.1) for r in records]
    assert 0.15 < splits.count("heldout") / len(splits) < 0.25
    assert 0.06 < splits.count("human") / len(splits) < 0.14


def test_bad_jsonl_lines_are_rejected_with_file_line_and_field(tmp_path):
    good = {"item_id": "a", "reference": "A good title here", "fields": {"comment": "Some text to caption."}}
    lines = [
        json.dumps(good).encode(),
        b'{"item_id": "b", "reference": "broken',  # malformed JSON
        json.dumps({"item_id": "c", "fields": {"comment": "text"}}).encode(),  # missing reference
        json.dumps({"item_id": "d", "reference": "Empty text", "fields": {"comment": "", "abstract": []}}).encode(),
        json.dumps({**good, "item_id": "e", "colour": "red"}).encode(),  # unknown key
        json.dumps({**good, "item_id": "f", "tags": "not-a-list"}).encode(),  # wrong type
        b"\xff\xfe not utf-8",
        b"[1, 2]",
        b"",
        json.dumps({**good, "item_id": "g", "fields": {"Body text": "x"}}).encode(),  # not a field name
        json.dumps({**good, "item_id": "h", "fields": {"reference": "x"}}).encode(),  # a reserved name
        json.dumps({**good, "item_id": "i", "fields": {"question": "Why?", "options": ["A: yes", "B: no"]}}).encode(),
    ]
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\n".join(lines))
    records, rejects = ingest_jsonl(path)
    assert [r["item_id"] for r in records] == ["a", "i"]
    assert records[1]["fields"] == {"question": "Why?", "options": ["A: yes", "B: no"]}
    reasons = {r["row_key"]: r["reason"] for r in rejects}
    assert "invalid JSON" in reasons["items.jsonl line 2"]
    assert "field reference" in reasons["items.jsonl line 3"]
    assert "every field is empty" in reasons["items.jsonl line 4"]
    assert "field colour" in reasons["items.jsonl line 5"]
    assert "field tags" in reasons["items.jsonl line 6"]
    assert "invalid UTF-8" in reasons["items.jsonl line 7"]
    assert "expected a JSON object" in reasons["items.jsonl line 8"]
    assert "field fields.Body text" in reasons["items.jsonl line 10"]
    assert "fields.reference is a reserved name" in reasons["items.jsonl line 11"]
    assert len(rejects) == 9


def _with_source(settings, source):
    return settings.model_copy(update={"data": settings.data.model_copy(update={"source": source})})


def test_a_file_without_any_valid_item_fails_clearly(tiny_settings, tmp_path):
    from tasks.runner import run_stage

    (tmp_path / "items.jsonl").write_text('{"nope": 1}\n')
    settings = _with_source(tiny_settings, "items.jsonl")
    with pytest.raises(ValueError, match="no valid items"):
        run_stage("ingest", settings, 1)


def test_ingest_stage_quarantines_bad_lines_and_keeps_the_rest(tiny_settings, tmp_path):
    from stores.store import Store
    from tasks.runner import run_stage

    rows = [
        {"item_id": f"i{n}", "reference": f"Title number {n}", "fields": {"comment": f"Comment {n}.", "abstract": ""}}
        for n in range(5)
    ]
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"item_id": "bad", "reference": ""}\nnot json\n'
    (tmp_path / "items.jsonl").write_text(text)
    settings = _with_source(tiny_settings, "items.jsonl")
    result = run_stage("ingest", settings, 1)
    assert (result.rows_in, result.rows_out, result.quarantined) == (7, 5, 2)
    with Store.open(settings.path("store")) as store:
        quarantined = store.read("quarantine")
    assert sorted(quarantined["row_key"]) == ["items.jsonl line 6", "items.jsonl line 7"]
    assert run_stage("ingest", settings, 1).cached


def test_a_task_naming_a_field_the_items_lack_stops_the_turn_with_the_field_named(tiny_settings):
    from tasks.errors import InputError
    from tasks.runner import run_stage

    task = tiny_settings.task.model_copy(update={"content": ("abstract", "body")})
    with pytest.raises(InputError) as error:
        run_stage("ingest", tiny_settings.model_copy(update={"task": task}), 1)
    message = str(error.value)
    assert message.startswith("task.content.1: the items of data.source semanlink have no field 'body'")
    assert "abstract, comment, context, tags" in message and "\n" not in message
