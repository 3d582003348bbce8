"""The task definition (`task:` in params.yaml): the prompt every stage renders, and one-line errors for a task file
that cannot work."""

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.config import ConfigError, MetricName, Settings, Task, load_settings
from tasks.evaluate.evaluate import summarize
from tasks.ingest.ingest import ITEMS, RESERVED
from tasks.metrics import REFERENCE_METRICS, reference_scores
from tasks.preference.scorer import ReferenceScorer
from tasks.promote.promote import guards
from tasks.prompts import item_content, prompt_messages, task_output
from tests.project import REPO

ITEM = {
    "item_id": "i1",
    "reference": "Dense passage retrieval",
    "abstract": "We   show that dense representations alone can implement retrieval.",
    "comment": "",
    "tags": np.array(["NLP", "Retrieval  systems"], dtype=object),
    "context": np.array(["BM25 revisited", "x" * 130], dtype=object),
}


def test_the_bundled_caption_task_renders_the_prompt_every_stage_shows():
    messages = prompt_messages(ITEM, load_settings(REPO / "params.yaml").task)
    assert messages == [
        {"role": "system", "content": "You write short, precise titles for bookmarked documents."},
        {
            "role": "user",
            "content": "Abstract: We show that dense representations alone can implement retrieval.\n"
            "Tags: NLP, Retrieval  systems\n"  # list entries are shown whole unless the signal sets a clip
            f"Related bookmarks: BM25 revisited; {'x' * 119}…\n\n"
            "Write a one-line title for this document. Answer with the title only.",
        },
    ]
    assert load_settings(REPO / "params.yaml").task == Task()  # the config's defaults are the bundled task
    assert item_content(ITEM, Task()) == ITEM["abstract"]
    assert item_content({"comment": "a note"}, Task()) == "a note"


def test_an_item_field_cannot_take_a_name_the_item_schema_reserves():
    schema = {column.name for column in ITEMS.columns} - {"fields"}
    assert set(RESERVED) == schema | {"context"}


def test_templates_take_item_fields_and_clip_them(tmp_path):
    task = Task(
        name="tagging",
        system="You label {tags} documents.",
        instruction="Give one more tag for this {{document}}, after: {tags}.",
        signals=[{"field": "abstract", "label": "Text", "clip": 20}],
        content=["comment", "abstract"],
    )
    system, user = prompt_messages(ITEM, task)
    assert system["content"] == "You label NLP, Retrieval  systems documents."
    tags = "NLP, Retrieval  systems"
    assert user["content"] == f"Text: We show that dense…\n\nGive one more tag for this {{document}}, after: {tags}."
    assert item_content(ITEM, task) == ITEM["abstract"]  # the comment is empty: the next content field
    assert prompt_messages({}, task)[1]["content"] == "\n\nGive one more tag for this {document}, after: ."


@pytest.mark.parametrize(
    ("task", "field", "says"),
    [
        ({"signals": [{"field": "Abstract", "label": "A"}]}, "task.signals.0.field", "should match pattern"),
        ({"instruction": "Summarize {Body}."}, "task.instruction", "placeholder {Body} is not a field name"),
        ({"system": "   "}, "task.system", "an empty template"),
        ({"instruction": "Close {abstract"}, "task.instruction", "not a valid template"),
        ({"instruction": "Title for {reference}"}, "task.instruction", "the reference is never shown"),
        ({"signals": [{"field": "reference", "label": "R"}]}, "task.signals.0.field", "never shown, never the content"),
        ({"content": ["reference"]}, "task.content.0", "never shown, never the content"),
        ({"signals": [{"field": "tags", "label": "T"}, {"field": "tags", "label": "U"}]}, "task.signals", "twice"),
        ({"signals": []}, "task.signals", "at least 1"),
        ({"reference": "answer"}, "task.reference", "Extra inputs are not permitted"),
        ({"output": "choice", "choices": ["A", "A"]}, "task", "at least two distinct choices"),
        ({"choices": ["A", "B"]}, "task", "only for output: choice"),
        ({"output": "choice", "choices": ["A", "two words"]}, "task.choices.1", "should match pattern"),
        ({"metrics": ["accuracy"]}, "task.metrics.0", "'exact_match'"),
        ({"metrics": ["rouge_l", "rouge_l"]}, "task", "names a metric twice"),
        ({"metrics": ["exact_match"]}, "task.metrics", "lacks promote.primary_metric rouge_l"),
        ({"scorer": "judge"}, "task.scorer", "'reference'"),
    ],
)
def test_a_task_that_cannot_work_is_one_line_naming_the_file_and_the_field(tmp_path, task, field, says):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"task": task}))
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {field}") and says in message and "\n" not in message


CHOICE = Task(name="quiz", output="choice", choices=["A", "B"], metrics=["exact_match"])


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("B", "B"),
        ("(B) because heat rises", "B"),
        ("Answer: A.", "A"),
        ("The answer is B\nA is wrong", "B"),
        ("a cat", ""),  # choices are matched as written: the article is not choice A
        ("ABBA", ""),  # inside a word
        ("I do not know", ""),
    ],
)
def test_a_choice_task_answers_with_the_first_choice_the_completion_names(completion, answer):
    assert task_output(completion, CHOICE) == answer
    assert task_output(f"  {completion}\nmore", Task()) == completion.splitlines()[0].strip()


def test_the_metrics_a_task_can_name_are_the_ones_the_scoreboard_computes():
    assert set(MetricName.__args__) == set(REFERENCE_METRICS)
    scores = reference_scores(["B", " b ", "A", ""], ["B", "B", "B", "B"], ("exact_match",))
    assert scores == {"exact_match": [1.0, 1.0, 0.0, 0.0]}


def test_a_choice_scoreboard_is_accuracy_and_the_gate_guards_no_phrasing():
    board = pd.DataFrame(
        {
            "item_id": list("abcd") * 2,
            "role": ["start"] * 4 + ["candidate"] * 4,
            "caption": ["A", "A", "A", "A", "A", "B", "B", "B"],
            "exact_match": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0],
        }
    )
    summary = summarize(board, CHOICE, seed=0, resamples=200)
    assert summary["start_exact_match"] == 0.25 and summary["candidate_exact_match"] == 0.75
    assert summary["delta_exact_match"] == 0.5 and "start_distinct_2" not in summary
    settings = Settings(task=CHOICE, promote={"primary_metric": "exact_match"})
    checks = guards(summary, settings.promote)
    assert set(checks) == {"delta_exact_match_ci_low", "answer_entropy"}  # no phrasing or length to guard
    assert summary["start_answer_entropy"] == 0.0 and checks["answer_entropy"]["passed"]  # it answers both now
    collapsed = summarize(board.assign(caption=["A", "B", "A", "B"] + ["B"] * 4), CHOICE, seed=0, resamples=200)
    assert collapsed["start_answer_entropy"] == 1.0 and collapsed["candidate_answer_entropy"] == 0.0
    assert not guards(collapsed, settings.promote)["answer_entropy"]["passed"]  # one letter for everything


def test_a_verifiable_task_prefers_the_correct_answer():
    scored = ReferenceScorer(CHOICE)(["B", "Answer: A", "no idea"], ["B", "B", "B"])
    assert scored["similarity"] == [1.0, 0.0, 0.0] and scored["violations"] == ["", "", "no_answer"]
    assert scored["score"][0] > scored["score"][1] > scored["score"][2]
