"""The CLI turns user mistakes into one clear line and exit status 2, never a traceback."""

from flows.cli import main
from tests.project import write_params


def test_a_bad_params_file(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text("evaluate: {items: 0}\n")
    assert main(["--params", str(path), "stage", "ingest"]) == 2
    assert "evaluate.items" in capsys.readouterr().err


def test_an_unknown_stage(tmp_path, capsys):
    assert main(["--params", str(write_params(tmp_path)), "stage", "anotate"]) == 2
    assert "unknown stage 'anotate'" in capsys.readouterr().err


def test_a_stage_before_its_upstream(tmp_path, capsys):
    assert main(["--params", str(write_params(tmp_path)), "stage", "denoise"]) == 2
    error = capsys.readouterr().err
    assert "needs ingest, annotate first" in error and "flywheel stage ingest --turn 1" in error


def test_a_missing_items_file(tmp_path, capsys):
    params = write_params(tmp_path, {"data": {"source": "no-such-items.jsonl"}})
    assert main(["--params", str(params), "stage", "ingest"]) == 2
    assert "no-such-items.jsonl is not a file" in capsys.readouterr().err


def test_the_summary_of_a_turn_that_never_ran(tmp_path, capsys):
    assert main(["--params", str(write_params(tmp_path)), "summary", "--turn", "3"]) == 2
    assert "turn 3 has not started" in capsys.readouterr().err
