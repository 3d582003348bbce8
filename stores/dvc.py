"""DVC as the flywheel drives it: `dvc add` a folder, push it to the project's default remote, pull it back.

The project's `.dvc/config` names a local folder (`dvc-remote/`, git-ignored) as the default remote, so versions are
kept offline; point `core.remote` at S3/GCS/SSH with DVC's own `dvc remote add -d` to keep them elsewhere. A project
folder that is not a DVC repository yet (a params file in a folder of its own) is initialised on first use, inside
git when the folder is a git checkout, with that same local remote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from stores.errors import StoreError

LOCAL_REMOTE = "local"
LOCAL_REMOTE_FOLDER = "dvc-remote"  # in the project folder (DVC stores it relative to .dvc/config)


class DvcError(StoreError):
    """A DVC command failed; the message carries its command line and DVC's own error."""


@dataclass(frozen=True)
class Tracked:
    """A folder as DVC recorded it: the `.dvc` file's text and the md5 of each file (from the `.dir` manifest)."""

    dvc_file: Path
    dvc_text: str
    md5: str  # of the folder: `<md5>.dir` names its manifest in the cache and the remote
    files: dict[str, str]  # relative path -> md5
    size: int

    def object_paths(self) -> list[str]:
        """Where the folder's objects live in a cache or remote (DVC 3 layout: files/md5/ab/cdef...)."""
        return [object_path(self.md5, ".dir")] + [object_path(d) for d in sorted(set(self.files.values()))]


def object_path(md5: str, suffix: str = "") -> str:
    """An object's place in a DVC 3 cache or remote."""
    return f"files/md5/{md5[:2]}/{md5[2:]}{suffix}"


def dvc(root: Path, *args: str) -> str:
    """Run `dvc ARGS` in `root` (the venv's dvc; no analytics: stores/env.py) and return its stdout."""
    command = [str(Path(sys.executable).parent / "dvc"), *args]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise DvcError(f"`dvc {' '.join(args)}` failed in {root}: {' '.join(message[-3:])}")
    return done.stdout


def ensure_repo(root: Path) -> None:
    """`root` as a DVC repository with a default remote (the local one unless the user set another)."""
    if not (root / ".dvc").is_dir():
        in_git = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
        if in_git.returncode != 0:
            dvc(root, "init", "--no-scm", "-q")
        elif Path(in_git.stdout.strip()).resolve() == root.resolve():
            dvc(root, "init", "-q")
        else:
            dvc(root, "init", "--subdir", "-q")
    if not dvc(root, "config", "core.remote").strip():
        dvc(root, "remote", "add", "--default", "--force", LOCAL_REMOTE, LOCAL_REMOTE_FOLDER)


def add_and_push(root: Path, folder: Path) -> Tracked:
    """Track `folder` (its `.dvc` file is written beside it) and push its objects to the default remote."""
    ensure_repo(root)
    relative = folder.resolve().relative_to(root.resolve())
    dvc(root, "add", "-q", str(relative))
    dvc_file = folder.with_name(folder.name + ".dvc")
    dvc(root, "push", "-q", str(dvc_file.relative_to(root)))
    return read_tracked(root, dvc_file)


def read_tracked(root: Path, dvc_file: Path) -> Tracked:
    """The `.dvc` file with the per-file hashes from the `.dir` manifest in the cache."""
    text = dvc_file.read_text()
    out = yaml.safe_load(text)["outs"][0]
    md5 = out["md5"].removesuffix(".dir")
    manifest = root / ".dvc" / "cache" / object_path(md5, ".dir")
    files = {entry["relpath"]: entry["md5"] for entry in json.loads(manifest.read_text())}
    return Tracked(dvc_file, text, md5, files, int(out.get("size", 0)))


def restore(root: Path, dvc_file: Path, text: str) -> Tracked:
    """Write the recorded `.dvc` file back and pull its folder from the cache or, if gone, the default remote."""
    ensure_repo(root)
    dvc_file.parent.mkdir(parents=True, exist_ok=True)
    if not dvc_file.exists() or dvc_file.read_text() != text:
        dvc_file.write_text(text)
    dvc(root, "pull", "-q", "--force", str(dvc_file.relative_to(root)))
    return read_tracked(root, dvc_file)


def remote_url(root: Path) -> str:
    """The default remote's location (DVC prints a local remote's folder as an absolute path)."""
    name = dvc(root, "config", "core.remote").strip()
    return dvc(root, "config", f"remote.{name}.url").strip()
