"""Great Expectations checks of every stage output, built from the table's declared columns.

Rows that fail go to quarantine with the failed expectation as the reason; the stage goes on with the rest. For a
duplicated key the first row is kept and the later ones are quarantined. An expectation that could not be evaluated
(GE reports an exception instead of a verdict) is an error, never a silent pass.
"""

from __future__ import annotations

from functools import lru_cache

import pandas as pd

from stores.schema import Column, TableSpec


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    return context


def _expectations(spec: TableSpec) -> list:
    import great_expectations as gx

    found = [gx.expectations.ExpectTableColumnsToMatchSet(column_set=list(spec.column_names), exact_match=False)]
    for column in spec.columns:
        found.extend(_column_expectations(column))
    if len(spec.key) == 1:
        found.append(gx.expectations.ExpectColumnValuesToBeUnique(column=spec.key[0]))
    else:
        found.append(gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=list(spec.key)))
    return found


def _column_expectations(column: Column) -> list:
    import great_expectations as gx

    found = []
    if not column.nullable:
        found.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=column.name))
    if column.min_value is not None or column.max_value is not None:
        found.append(
            gx.expectations.ExpectColumnValuesToBeBetween(
                column=column.name, min_value=column.min_value, max_value=column.max_value
            )
        )
    if column.min_length is not None or column.max_length is not None:
        found.append(
            gx.expectations.ExpectColumnValueLengthsToBeBetween(
                column=column.name, min_value=column.min_length, max_value=column.max_length
            )
        )
    return found


def validate(spec: TableSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Returns the rows that pass and the rejected ones as {row_key, reason, row}."""
    import great_expectations as gx

    missing = [name for name in spec.column_names if name not in frame.columns]
    if missing:
        raise ValueError(f"stage output for table {spec.name} lacks declared columns {missing}")
    if frame.empty:
        return frame, []
    frame = frame.reset_index(drop=True)
    context = _context()
    source = context.data_sources.add_or_update_pandas(f"flywheel-{spec.name}")
    asset = source.add_dataframe_asset(f"{spec.name}-{id(frame)}")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=spec.name, expectations=_expectations(spec))
    result = batch.validate(suite, result_format="COMPLETE")

    reasons: dict[int, list[str]] = {}
    for outcome in result.results:
        config = outcome.expectation_config
        if outcome.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {config.type} on {spec.name} could not run: {outcome.exception_info}")
        if outcome.success:
            continue
        unexpected = outcome.result.get("unexpected_index_list")
        if unexpected is None:
            raise ValueError(f"table {spec.name} failed {config.type}: {outcome.result}")
        if config.type in ("expect_compound_columns_to_be_unique", "expect_column_values_to_be_unique"):
            unexpected = frame.index[frame.duplicated(list(spec.key), keep="first")]
        label = config.type.removeprefix("expect_") + (
            f"({config.kwargs['column']})" if "column" in config.kwargs else ""
        )
        for index in unexpected:
            reasons.setdefault(int(index), []).append(label)

    rejected = sorted(reasons)
    rejects = [
        {
            "row_key": "|".join(str(frame.at[i, k]) for k in spec.key) + f"#row{i}",
            "reason": "; ".join(reasons[i]),
            "row": frame.loc[i].to_dict(),
        }
        for i in rejected
    ]
    return frame.drop(index=rejected).reset_index(drop=True), rejects
