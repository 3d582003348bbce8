"""Step 3 of the four-step collection: response filtering, then pair selection with pair filters.

A response is dropped when it is degenerate (any format rule of the scorer: empty or too short, too long, several
lines, restating the instruction, repetitive) or repeats another response to the same prompt word for word. Of the
survivors, the highest-scored becomes the candidate chosen and the lowest the candidate rejected (Iter-W2S-RLAIF's
rule over its response distribution set). A pair is then dropped as a near tie (score gap below `min_score_gap`:
an uninformative label) or as both bad (the best scores below `min_chosen_score`: nothing worth preferring). What
is dropped stays in the tables with its reason.

Input columns (scored responses): item_id, generator, response_idx, text, violations, score.
Output: responses + kept, reason; pairs: item_id, chosen, rejected, chosen_generator, rejected_generator,
chosen_score, rejected_score, kept, reason.
"""

from __future__ import annotations

import pandas as pd

PAIR_COLUMNS = [
    "item_id",
    "chosen",
    "rejected",
    "chosen_generator",
    "rejected_generator",
    "chosen_score",
    "rejected_score",
    "kept",
    "reason",
]


def filter_responses(responses: pd.DataFrame) -> pd.DataFrame:
    normalized = responses["text"].str.lower().str.split().str.join(" ")
    repeated = normalized.groupby(responses["item_id"]).transform(lambda s: s.duplicated())
    reasons = [
        f"degenerate:{violations}" if violations else ("repeated" if again else "")
        for violations, again in zip(responses["violations"], repeated)
    ]
    return responses.assign(kept=[not r for r in reasons], reason=reasons)


def select_pairs(responses: pd.DataFrame, min_score_gap: float, min_chosen_score: float) -> pd.DataFrame:
    """Best vs worst kept response per item, with the pair filters applied (kept/reason)."""
    rows = []
    kept = responses[responses["kept"]]
    for item_id, group in kept.groupby("item_id", sort=True):
        if len(group) < 2:
            continue
        ranked = group.sort_values(["score", "generator", "response_idx"], ascending=[False, True, True])
        best, worst = ranked.iloc[0], ranked.iloc[-1]
        gap = float(best["score"] - worst["score"])
        reason = "near_tie" if gap < min_score_gap else "both_bad" if best["score"] < min_chosen_score else ""
        rows.append(
            (
                item_id,
                best["text"],
                worst["text"],
                best["generator"],
                worst["generator"],
                float(best["score"]),
                float(worst["score"]),
                not reason,
                reason,
            )
        )
    # typed even when empty: pandas reads an empty object-dtype `kept` as a column list, not a mask
    return pd.DataFrame(rows, columns=PAIR_COLUMNS).astype(
        {"kept": bool, "chosen_score": float, "rejected_score": float}
    )
