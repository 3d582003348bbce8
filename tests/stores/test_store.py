import pandas as pd
import pytest

from stores.llm_cache import LLMCallCache, call_key
from stores.schema import Column, TableSpec
from stores.store import Lineage, Store

SPEC = TableSpec("things", (Column("item_id", "VARCHAR"), Column("value", "DOUBLE")), key=("item_id",))
LINEAGE = Lineage("test", "flywheel-policy/v1", "run-1", "params-1", "batch-1")


def test_rerunning_an_insert_adds_nothing(tmp_path):
    frame = pd.DataFrame({"item_id": ["a", "b"], "value": [1.0, 2.0]})
    with Store.open(tmp_path / "s.duckdb") as store:
        assert store.insert(SPEC, frame, LINEAGE) == 2
        assert store.insert(SPEC, frame, LINEAGE) == 0
        assert store.count("things") == 2


def test_every_row_carries_lineage(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.insert(SPEC, pd.DataFrame({"item_id": ["a"], "value": [1.0]}), LINEAGE)
        row = store.read("things", "batch-1").iloc[0]
    assert (row["stage"], row["model_version"], row["run_id"], row["params_hash"]) == (
        "test",
        "flywheel-policy/v1",
        "run-1",
        "params-1",
    )
    assert row["created_at"] is not None


def test_a_failed_transaction_leaves_nothing_behind(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.insert(SPEC, pd.DataFrame({"item_id": ["a"], "value": [1.0]}), LINEAGE)
                raise RuntimeError("killed mid-stage")
        assert store.count("things") == 0


def test_quarantine_keeps_the_row_and_the_reason(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.quarantine("test", "things", "batch-1", "run-1", [{"row_key": "a", "reason": "empty", "row": {"x": 1}}])
        rows = store.read("quarantine")
    assert rows.loc[0, "reason"] == "empty" and rows.loc[0, "row_json"] == '{"x": 1}'


def test_parquet_export_writes_one_batch(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.insert(SPEC, pd.DataFrame({"item_id": ["a"], "value": [1.0]}), LINEAGE)
        other = Lineage("test", "v1", "run-2", "params-1", "batch-2")
        store.insert(SPEC, pd.DataFrame({"item_id": ["b"], "value": [2.0]}), other)
        store.export_parquet("things", "batch-2", tmp_path / "out" / "things.parquet")
    exported = pd.read_parquet(tmp_path / "out" / "things.parquet")
    assert list(exported["item_id"]) == ["b"]
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_cache_keys_are_canonical_and_complete():
    request = {"prompt": [{"role": "user", "content": "hi"}], "sampling": {"temperature": 0.7, "top_p": 1.0}, "seed": 1}
    reordered = {
        "seed": 1,
        "sampling": {"top_p": 1.0, "temperature": 0.7},
        "prompt": [{"content": "hi", "role": "user"}],
    }
    assert call_key("generate", "fp", request) == call_key("generate", "fp", reordered)
    assert call_key("generate", "fp", request) != call_key("generate", "other-model", request)
    assert call_key("generate", "fp", request) != call_key("generate", "fp", {**request, "seed": 2})
    assert call_key("generate", "fp", request) != call_key("score", "fp", request)


def test_cache_round_trip(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        cache = LLMCallCache(store.con)
        cache.put_many("generate", "fp", "v1", [("k1", {"prompt": "p"}, {"text": "t"})])
        cache.put_many("generate", "fp", "v1", [("k1", {"prompt": "p"}, {"text": "other"})])
        assert cache.get_many(["k1", "k2"]) == {"k1": {"text": "t"}}
        assert cache.count() == 1


def test_a_table_an_older_schema_wrote_is_refused_with_its_columns_named(tmp_path):
    from stores.errors import StoreError
    from tasks.ingest.ingest import ITEMS

    with Store.open(tmp_path / "old.duckdb") as store:
        store.con.execute("CREATE TABLE items (item_id VARCHAR NOT NULL, title VARCHAR NOT NULL, batch_id VARCHAR)")
        with pytest.raises(StoreError, match=r"old.duckdb: table items was written by an older flywheel \(its "
                           r"columns title are gone"):  # fmt: skip
            store.ensure(ITEMS)
