"""What the page keeps per visitor, and for how long: an event set when they leave, and their uploads on disk.

Gradio writes every upload, and every image the page shows, under its temporary folder (``GRADIO_TEMP_DIR``) and
keeps them while the server runs; in a pod that folder is a size-limited emptyDir, and a full one evicts the pod.
So a visitor keeps one upload (the newest), their uploads go when they leave, and the folder is held under a size
budget, oldest files first (gradio's own ``delete_cache`` removes what is older than an age besides).
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from pathlib import Path

from vcot.log import get_logger

log = get_logger(__name__)


class Sessions:
    """Per visitor (gradio's session hash): a cancel event for their generation, and their uploads under ``files``
    (files elsewhere, such as the page's examples, are never deleted). Safe to call from gradio's worker threads."""

    def __init__(self, files: Path | None = None, max_bytes: int = 1 << 30) -> None:
        self.files = files.resolve() if files else None
        self.max_bytes = max_bytes
        self._cancel: dict[str, threading.Event] = {}
        self._uploads: dict[str, set[Path]] = {}
        self._lock = threading.Lock()

    def cancel_event(self, session: str) -> threading.Event:
        """The event :meth:`left` sets: generation for this visitor stops at its next layer."""
        with self._lock:
            return self._cancel.setdefault(session, threading.Event())

    def uploaded(self, session: str, path: str | None) -> None:
        """``path`` is this visitor's image now: their earlier uploads are deleted, then the folder is bounded."""
        upload = self._ours(path)
        with self._lock:
            old = self._uploads.get(session, set()) - {upload}
            self._uploads[session] = {upload} if upload else set()
        _delete(old, self.files)
        if self.files:
            bound_folder(self.files, self.max_bytes, keep=[upload] if upload else [])

    def left(self, session: str) -> None:
        """The visitor closed the page: stop their generation, delete their uploads, forget them."""
        with self._lock:
            event = self._cancel.pop(session, None)
            uploads = self._uploads.pop(session, set())
        if event is not None:
            event.set()
        _delete(uploads, self.files)

    def _ours(self, path: str | None) -> Path | None:
        if not path or self.files is None:
            return None
        resolved = Path(path).resolve()
        return resolved if resolved.is_relative_to(self.files) else None


def bound_folder(folder: Path, max_bytes: int, keep: Collection[Path] = ()) -> list[Path]:
    """Delete the oldest files under ``folder`` (by modification time) until they hold at most ``max_bytes``; files
    in ``keep`` stay. Returns what was deleted."""
    files = []
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        except FileNotFoundError:  # deleted meanwhile by gradio's delete_cache
            continue
    total = sum(size for _, size, _ in files)
    kept = {Path(path).resolve() for path in keep}
    deleted = []
    for _, size, path in sorted(files, key=lambda item: item[0]):
        if total <= max_bytes:
            break
        if path.resolve() in kept:
            continue
        _delete([path], folder)
        total -= size
        deleted.append(path)
    if deleted:
        log.info("demo_files_bounded", deleted=len(deleted), left_bytes=total, max_bytes=max_bytes)
    return deleted


def _delete(paths: Collection[Path], root: Path | None) -> None:
    """Delete files, and the folders gradio made for them (one per file) once empty, never ``root`` itself."""
    for path in paths:
        path.unlink(missing_ok=True)
        if root is not None and path.parent.resolve() != root.resolve():
            try:
                path.parent.rmdir()
            except OSError:  # not empty, or already gone
                pass
