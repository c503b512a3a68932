"""The page's files on disk (vcot.demo.sessions, hardening item 14): each visitor keeps their newest upload only,
their uploads go when they leave, the folder stays under its size budget (oldest first), and nothing outside the
page's folder (its examples) is ever deleted; the visitor's cancel event is set when they leave."""

from __future__ import annotations

import os
from pathlib import Path

from vcot.demo.sessions import Sessions, bound_folder


def upload(folder: Path, name: str, size: int = 1000, age_s: float = 0) -> Path:
    """A file as gradio writes an upload: in a folder of its own under the page's folder."""
    path = folder / f"hash-{name}" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * size)
    if age_s:
        os.utime(path, (path.stat().st_mtime - age_s,) * 2)
    return path


def test_a_visitor_keeps_their_newest_upload_and_loses_them_all_when_they_leave(tmp_path: Path) -> None:
    files = tmp_path / "files"
    sessions = Sessions(files, max_bytes=10**6)
    first, second, other = upload(files, "a.png"), upload(files, "b.png"), upload(files, "c.png")
    sessions.uploaded("visitor-1", str(first))
    sessions.uploaded("visitor-2", str(other))
    sessions.uploaded("visitor-1", str(first))  # asked twice about the same image: kept
    assert first.exists()
    sessions.uploaded("visitor-1", str(second))
    assert not first.exists() and not first.parent.exists() and second.exists() and other.exists()
    cancel = sessions.cancel_event("visitor-1")
    sessions.left("visitor-1")
    assert cancel.is_set() and not second.exists() and other.exists()
    assert files.is_dir(), "the page's folder itself stays"
    assert not sessions.cancel_event("visitor-1").is_set(), "a new visit starts afresh"


def test_files_outside_the_pages_folder_are_never_deleted(tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    example = upload(examples, "circle.png")
    sessions = Sessions(tmp_path / "files", max_bytes=10)
    sessions.uploaded("visitor", str(example))
    sessions.uploaded("visitor", None)
    sessions.left("visitor")
    assert example.exists()


def test_the_folder_is_bounded_oldest_first_but_the_upload_in_use_stays(tmp_path: Path) -> None:
    files = tmp_path / "files"
    old = upload(files, "old.png", age_s=300)
    middle = upload(files, "mid.png", age_s=200)
    shown = upload(files, "shown.png", age_s=100)
    new = upload(files, "new.png", size=2500)
    assert bound_folder(files, max_bytes=3600, keep=[new]) == [old, middle]
    assert shown.exists() and new.exists()
    assert bound_folder(files, max_bytes=100, keep=[new]) == [shown]  # the one in use stays, even over budget
    sessions = Sessions(files, max_bytes=100)
    late = upload(files, "late.png", size=50)
    sessions.uploaded("visitor", str(late))
    assert not new.exists() and late.exists()
