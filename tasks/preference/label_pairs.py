"""Step 4 of the four-step collection: labelling, with TSO's correction of AI labels by human feedback.

The external scorer's ranking gives every pair its AI label (label_source "ai"). Then humans win wherever they
spoke (`correct_with_humans`):
- **Human references**: on an item of the human split the human title is in the pool. If the AI scorer ranked a
  model response above it, that is a preference error: the pair becomes (human title, that response), `corrected`.
  If the AI already ranked the human title first, the pair stands (label_source "human_reference").
- **Human labels**: a seeded `human_label_share` of the AI-labelled pairs goes to the labelling queue (table
  `label_queue`, exported as Parquet; the two responses appear as a/b in a seeded order so the AI's choice is not
  given away). Labels come back as JSON lines `{"pair_id": ..., "preferred": "a" | "b"}` in `paths.labels`; a label
  that disagrees with the AI flips the pair (`corrected`).
Where no human label exists, only the human references carry the human signal, and the data says so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from tasks.errors import InputError
from tasks.preference.generate_responses import HUMAN

QUEUE_COLUMNS = ["pair_id", "item_id", "response_a", "response_b", "ai_preferred", "human_preferred", "status"]


def pair_id(item_id: str, chosen: str, rejected: str) -> str:
    return hashlib.sha256(json.dumps([item_id, chosen, rejected]).encode()).hexdigest()[:16]


def _unit(seed: int, key: str) -> float:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def ai_labels(pairs: pd.DataFrame) -> pd.DataFrame:
    ids = [pair_id(i, c, r) for i, c, r in zip(pairs["item_id"], pairs["chosen"], pairs["rejected"])]
    return pairs.assign(pair_id=ids, label_source="ai", corrected=False)


def correct_with_references(pairs: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    """Human title beats the response the AI ranked above it; see the module docstring."""
    pairs = pairs.set_index("item_id", drop=False)
    for item_id, group in responses.groupby("item_id", sort=True):
        human = group[group["generator"] == HUMAN]
        models = group[(group["generator"] != HUMAN) & group["kept"]]
        if human.empty or models.empty:
            continue
        human, best = human.iloc[0], models.sort_values(["score", "generator", "response_idx"]).iloc[-1]
        if item_id in pairs.index and pairs.loc[item_id, "chosen_generator"] == HUMAN:
            pairs.loc[item_id, "label_source"] = "human_reference"
            continue
        if best["text"] == human["text"]:
            continue
        pairs.loc[item_id] = pd.Series(
            {
                "pair_id": pair_id(item_id, human["text"], best["text"]),
                "item_id": item_id,
                "chosen": human["text"],
                "rejected": best["text"],
                "chosen_generator": HUMAN,
                "rejected_generator": best["generator"],
                "chosen_score": float(human["score"]),
                "rejected_score": float(best["score"]),
                "kept": True,
                "reason": "",
                "label_source": "human_reference",
                "corrected": True,
            }
        )
    return pairs.reset_index(drop=True)


def labelling_queue(pairs: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """A seeded `share` of the kept AI-labelled pairs, responses in a seeded a/b order."""
    rows = []
    for pair in pairs[(pairs["label_source"] == "ai") & pairs["kept"]].itertuples():
        if _unit(seed, pair.pair_id) >= share:
            continue
        chosen_first = _unit(seed + 1, pair.pair_id) < 0.5
        a, b = (pair.chosen, pair.rejected) if chosen_first else (pair.rejected, pair.chosen)
        rows.append((pair.pair_id, pair.item_id, a, b, "a" if chosen_first else "b", "", "queued"))
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def apply_human_labels(pairs: pd.DataFrame, queue: pd.DataFrame, labels: dict[str, str]):
    """(pairs, queue) with the labels merged: a disagreeing label swaps chosen and rejected."""
    pairs, queue = pairs.copy(), queue.copy()
    for index, entry in queue.iterrows():
        preferred = labels.get(entry["pair_id"])
        if preferred is None:
            continue
        queue.loc[index, ["human_preferred", "status"]] = [preferred, "labelled"]
        row = pairs.index[pairs["pair_id"] == entry["pair_id"]][0]
        pairs.loc[row, "label_source"] = "human_label"
        if preferred != entry["ai_preferred"]:
            swapped = pairs.loc[row, ["rejected", "chosen", "rejected_generator", "chosen_generator"]].tolist()
            scores = pairs.loc[row, ["rejected_score", "chosen_score"]].tolist()
            pairs.loc[row, ["chosen", "rejected", "chosen_generator", "rejected_generator"]] = swapped
            pairs.loc[row, ["chosen_score", "rejected_score"]] = scores
            pairs.loc[row, "corrected"] = True
    return pairs, queue


def read_labels(path: Path) -> dict[str, str]:
    """pair_id -> "a" | "b" from a JSON-lines file; no file means no labels yet. A bad line is an error naming it."""
    if not path.exists():
        return {}
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            pair, preferred = str(entry["pair_id"]), entry["preferred"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f'{path}:{number}: expected {{"pair_id": ..., "preferred": "a"|"b"}} ({error})') from error
        if preferred not in ("a", "b"):
            raise InputError(f'{path}:{number}: preferred must be "a" or "b", got {preferred!r}')
        labels[pair] = preferred
    return labels
