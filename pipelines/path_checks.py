"""Paths from an untrusted image list kept inside their folder, and ImageIDs that are plain names.

An `openimages_csv:` list names its images by ImageID (IMAGE_DIR/<ImageID>.jpg) or by a `path` column;
both come from whoever wrote the CSV. `check_image_id` refuses an ImageID that is not a plain name (a
path separator, `..`, NUL, an absolute path), and `inside` refuses a path that leaves its folder: a local
path is resolved with its symlinks (a link inside the folder that points out of it is refused too), a
gs:// path, which has no links, is normalized lexically. Each refusal is a `PathRefused` (an OSError)
whose message is the dead letter's reason.

    python -c "from pipelines import path_checks; print(path_checks.inside('/data/oi', '/data/oi/a/../b.jpg'))"
"""

from __future__ import annotations

import os
import posixpath

_GCS = "gs://"


class PathRefused(OSError):
    """A path or ImageID that an image list may not use; the message says why."""


def check_image_id(image_id: str) -> None:
    """Raises PathRefused unless `image_id` is a plain name: no '/', '\\', '..', NUL, not empty, not absolute."""
    problem = None
    if not image_id:
        problem = "is empty"
    elif "\x00" in image_id:
        problem = "holds a NUL character"
    elif "/" in image_id or "\\" in image_id:
        problem = "holds a path separator"
    elif ".." in image_id or image_id == ".":
        problem = "holds '..'"
    if problem:
        raise PathRefused(f"ImageID {image_id!r} {problem}: an ImageID must be a plain name")


def inside(root: str, path: str) -> str:
    """The path to read for `path`, which must lie inside the folder `root` (local, or gs:// lexically).

    Returns:
      the resolved local path (symlinks followed), or the normalized gs:// path.

    Raises:
      PathRefused: `path` is outside `root` (or on another file system than it), or holds a NUL.
    """
    if "\x00" in path:
        raise PathRefused(f"path {path!r} holds a NUL character")
    if path.startswith(_GCS) or root.startswith(_GCS):
        if not (path.startswith(_GCS) and root.startswith(_GCS)):
            raise PathRefused(f"{path} is outside {root}: one is on gs://, the other is not")
        resolved, folder = posixpath.normpath(path[len(_GCS):]), posixpath.normpath(root[len(_GCS):])
        if not resolved.startswith(folder.rstrip("/") + "/"):
            raise PathRefused(f"{path} is outside {root}")
        return _GCS + resolved
    resolved, folder = os.path.realpath(path), os.path.realpath(root or ".")
    if os.path.commonpath([resolved, folder]) != folder or resolved == folder:
        raise PathRefused(f"{path} is outside {root or '.'} (it resolves to {resolved})")
    return resolved
