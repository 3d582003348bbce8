"""The task definition (`task:` in params.yaml): the prompt every stage renders, and one-line errors for a task file
that cannot work."""

import numpy as np
import pytest
import yaml

from tasks.config import ConfigError, ItemField, Task, load_settings
from tasks.ingest.ingest import ITEMS
from tasks.prompts import item_content, prompt_messages
from tests.project import REPO

ITEM = {
    "item_id": "i1",
    "title": "Dense passage retrieval",
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


def test_the_item_fields_a_task_can_name_are_the_item_schema_and_the_retrieved_context():
    schema = {column.name for column in ITEMS.columns} - {"item_id", "source", "split"}
    assert set(ItemField.__args__) == schema | {"context"}


def test_templates_take_item_fields_and_clip_them(tmp_path):
    task = Task(
        name="tagging",
        system="You label {tags} documents.",
        instruction="Give one more tag for this {{document}}, after: {tags}.",
        signals=[{"field": "abstract", "label": "Text", "clip": 20}],
        reference="title",
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
        ({"signals": [{"field": "abstrct", "label": "A"}]}, "task.signals.0.field", "'abstract'"),
        ({"instruction": "Summarize {body}."}, "task.instruction", "placeholder {body} is not an item field"),
        ({"system": "   "}, "task.system", "an empty template"),
        ({"instruction": "Close {abstract"}, "task.instruction", "not a valid template"),
        ({"instruction": "Title for {title}"}, "task", "the reference field title is shown in the prompt"),
        ({"signals": [{"field": "tags", "label": "T"}, {"field": "tags", "label": "U"}]}, "task.signals", "twice"),
        ({"signals": []}, "task.signals", "at least 1"),
        ({"reference": "answer"}, "task.reference", "'title'"),
    ],
)
def test_a_task_that_cannot_work_is_one_line_naming_the_file_and_the_field(tmp_path, task, field, says):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"task": task}))
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {field}") and says in message and "\n" not in message
