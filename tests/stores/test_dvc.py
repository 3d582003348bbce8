"""stores/dvc.py on a real DVC: a folder added and pushed to the project's local remote comes back byte for byte
after the folder, its .dvc file and the cache are gone; a project that is not a DVC repository yet gets one."""

from __future__ import annotations

import shutil

import pytest

from stores import dvc


def test_a_pushed_folder_is_restored_from_the_remote_alone(tmp_path):
    folder = tmp_path / "data" / "turns" / "lineage" / "turn-1"
    (folder / "tables").mkdir(parents=True)
    (folder / "tables" / "a.parquet").write_bytes(b"\x00\x01 not really parquet")
    (folder / "README.md").write_text("card\n")
    tracked = dvc.add_and_push(tmp_path, folder)
    assert (tmp_path / ".dvc").is_dir() and dvc.remote_url(tmp_path) == str(tmp_path / "dvc-remote")
    assert set(tracked.files) == {"tables/a.parquet", "README.md"}
    assert all((tmp_path / "dvc-remote" / path).is_file() for path in tracked.object_paths())

    text = tracked.dvc_file.read_text()
    shutil.rmtree(folder)
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    tracked.dvc_file.unlink()
    restored = dvc.restore(tmp_path, tracked.dvc_file, text)
    assert restored.md5 == tracked.md5
    assert (folder / "tables" / "a.parquet").read_bytes() == b"\x00\x01 not really parquet"


def test_a_failing_dvc_command_is_one_clear_error(tmp_path):
    with pytest.raises(dvc.DvcError, match="dvc pull .* failed in"):
        text = "outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: x\n"
        dvc.restore(tmp_path, tmp_path / "missing.dvc", text)
