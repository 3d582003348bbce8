import pandas as pd
import pytest

from stores.schema import Column, TableSpec
from tasks.validate import validate

SPEC = TableSpec(
    "captions",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("caption", "VARCHAR", min_length=1, max_length=20),
        Column("score", "DOUBLE", min_value=0.0, max_value=1.0),
    ),
    key=("item_id",),
)


def test_failing_rows_are_quarantined_with_their_reasons():
    frame = pd.DataFrame(
        {
            "item_id": ["a", "b", "b", "c", "d"],
            "caption": ["fine", None, "x" * 50, "", "ok"],
            "score": [0.1, 0.5, 2.0, 0.3, 0.2],
        }
    )
    accepted, rejects = validate(SPEC, frame)
    assert list(accepted["item_id"]) == ["a", "d"]
    reasons = {r["row_key"]: r["reason"] for r in rejects}
    assert "not_be_null(caption)" in reasons["b#row1"]
    second_b = reasons["b#row2"]
    assert "unique" in second_b and "lengths_to_be_between(caption)" in second_b and "be_between(score)" in second_b
    assert "lengths_to_be_between(caption)" in reasons["c#row3"]


def test_clean_frames_pass_untouched():
    frame = pd.DataFrame({"item_id": ["a", "b"], "caption": ["one", "two"], "score": [0.0, 1.0]})
    accepted, rejects = validate(SPEC, frame)
    assert rejects == [] and accepted.equals(frame)


def test_a_missing_declared_column_is_an_error():
    with pytest.raises(ValueError, match="lacks declared columns"):
        validate(SPEC, pd.DataFrame({"item_id": ["a"], "caption": ["x"]}))
