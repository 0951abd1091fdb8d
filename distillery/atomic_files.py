"""Output files appear whole or not at all: written under a temporary name in their folder, then renamed.

A job that fails or is killed while it writes an output must not leave a truncated file where the last
good one was, nor a temporary behind. `staged(path)` yields a temporary path in the same folder (a dot
name ending in the final name, so that a check of the extension, such as Keras' `.keras`, still
passes); the writer makes a file or a folder there; when the block succeeds it is renamed onto `path`
(a folder replaces the old folder: the old one is moved aside, the new one renamed in, the old one
removed), when it raises the temporary is removed and the exception goes on. `staged_file(path, mode)`
does the same around an open file. Several outputs staged in nested blocks appear together at the end.

Remote paths (gs://, anything with ://) go through tf.io.gfile. GCS has no atomic rename, so a file is
written complete under its temporary name, then renamed (a server-side copy: the object appears whole);
a folder is staged whole, then the old one is removed and its files are renamed in one by one. A writer
that writes local files only (open(), matplotlib) passes `local_writer=True`: it gets a local scratch
path, copied to the temporary remote name once complete.

`check_writable(folder, flag)` makes the folder and writes and removes a probe file there, so a job
refuses an unwritable output folder before its heavy work, naming the flag.

    python -c "from distillery import atomic_files; atomic_files.check_writable('/tmp/out', '--output')"
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO

TEMPORARY_PREFIX = ".tmp-"


class OutputFolderError(ValueError):
    """An output folder that cannot be made or written; the message names the flag and the reason."""


def is_remote(path: str) -> bool:
    return "://" in path


def temporary_name(path: str, kind: str = "new") -> str:
    """A fresh hidden name beside `path` that ends in its name: DIR/.tmp-new-1a2b3c4d-NAME."""
    folder, name = os.path.split(path.rstrip("/"))
    return os.path.join(folder, f"{TEMPORARY_PREFIX}{kind}-{uuid.uuid4().hex[:8]}-{name}")


@contextlib.contextmanager
def staged(path: str, *, local_writer: bool = False) -> Iterator[str]:
    """Yields the temporary path to write a file or a folder at; moves it onto `path` when the block ends.

    Raises:
      FileNotFoundError: the block wrote nothing at the temporary path.
      Whatever the block raised (after removing the temporary).
    """
    final = path.rstrip("/") or path
    temporary = temporary_name(final)
    scratch = tempfile.mkdtemp(prefix="distillery-staged-") if local_writer and is_remote(final) else None
    written = os.path.join(scratch, os.path.basename(final)) if scratch else temporary
    try:
        yield written
        if scratch:
            _copy_tree(written, temporary)
        _move_into_place(temporary, final)
    except BaseException:
        _remove_quietly(temporary)
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path: str, mode: str = "w") -> Iterator[IO]:
    """An open file (text in UTF-8, or binary with mode "wb") that replaces `path` when the block ends."""
    with staged(path) as temporary:
        if is_remote(temporary):
            import tensorflow as tf  # pylint: disable=import-outside-toplevel (remote paths only)

            with tf.io.gfile.GFile(temporary, mode) as handle:
                yield handle
        else:
            with open(temporary, mode, encoding=None if "b" in mode else "utf-8") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())


def check_writable(folder: str, flag: str, flag_value: str | None = None) -> None:
    """Makes `folder` and writes and removes a probe file in it.

    Raises:
      OutputFolderError: `{flag}={flag_value or folder}: cannot write to {folder}: {reason}`.
    """
    folder = folder or "."
    probe = os.path.join(folder, f"{TEMPORARY_PREFIX}probe-{uuid.uuid4().hex[:8]}")
    try:
        if is_remote(folder):
            import tensorflow as tf  # pylint: disable=import-outside-toplevel (remote paths only)

            try:
                tf.io.gfile.makedirs(folder)
                with tf.io.gfile.GFile(probe, "w") as handle:
                    handle.write("probe")
                tf.io.gfile.remove(probe)
            except tf.errors.OpError as error:
                raise OSError(error.message) from None
        else:
            if os.path.lexists(folder) and not os.path.isdir(folder):
                raise OSError("it is a file, not a folder")
            os.makedirs(folder, exist_ok=True)
            with open(probe, "w", encoding="utf-8") as handle:
                handle.write("probe")
            os.remove(probe)
    except OSError as error:
        reason = f"{error.strerror} ({error.filename})" if error.strerror and error.filename else (
            error.strerror or str(error))
        raise OutputFolderError(f"{flag}={flag_value or folder}: cannot write to {folder}: {reason}") from None


def _move_into_place(temporary: str, final: str) -> None:
    if is_remote(final):
        _move_remote(temporary, final)
        return
    if not os.path.lexists(temporary):
        raise FileNotFoundError(f"nothing was written at {temporary} (for {final})")
    _sync_tree(temporary)
    if os.path.isdir(temporary) and os.path.lexists(final):
        aside = temporary_name(final, "old")
        os.rename(final, aside)
        try:
            os.rename(temporary, final)
        except OSError:
            os.rename(aside, final)
            raise
        _remove_quietly(aside)
    else:
        os.replace(temporary, final)
    _sync_folder(os.path.dirname(final) or ".")


def _move_remote(temporary: str, final: str) -> None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel (remote paths only)

    gfile = tf.io.gfile
    if not gfile.exists(temporary):
        raise FileNotFoundError(f"nothing was written at {temporary} (for {final})")
    files = _remote_files(temporary)
    if files is None:
        gfile.rename(temporary, final, overwrite=True)
        return
    if gfile.exists(final):
        gfile.rmtree(final)
    for relative in files:
        target = f"{final}/{relative}"
        gfile.makedirs(os.path.dirname(target))
        gfile.rename(f"{temporary}/{relative}", target, overwrite=True)
    gfile.makedirs(final)
    gfile.rmtree(temporary)


def _remote_files(path: str) -> list[str] | None:
    """The files under a remote folder, relative to it (None when `path` is a file)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel (remote paths only)

    if not tf.io.gfile.isdir(path):
        return None
    files = []
    for folder, _, names in tf.io.gfile.walk(path):
        relative = folder[len(path):].strip("/")
        files += [f"{relative}/{name}" if relative else name for name in names]
    return files


def _copy_tree(local: str, remote: str) -> None:
    """Copies a local file or folder to a remote path (the `local_writer` case)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel (remote paths only)

    if not os.path.lexists(local):
        raise FileNotFoundError(f"nothing was written at {local} (for {remote})")
    if not os.path.isdir(local):
        tf.io.gfile.copy(local, remote, overwrite=True)
        return
    for folder, _, names in os.walk(local):
        relative = os.path.relpath(folder, local)
        target_folder = remote if relative == "." else f"{remote}/{relative}"
        tf.io.gfile.makedirs(target_folder)
        for name in names:
            tf.io.gfile.copy(os.path.join(folder, name), f"{target_folder}/{name}", overwrite=True)


def _sync_tree(path: str) -> None:
    """fsync of every file under `path`, so that the rename never publishes data still in the page cache."""
    paths = [path] if not os.path.isdir(path) else [
        os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names]
    for name in paths:
        with open(name, "rb") as handle:
            os.fsync(handle.fileno())


def _sync_folder(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _remove_quietly(path: str) -> None:
    """Removes a temporary file or folder; a failure is logged, not raised (the first error matters)."""
    try:
        if is_remote(path):
            import tensorflow as tf  # pylint: disable=import-outside-toplevel (remote paths only)

            if tf.io.gfile.exists(path):
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    except Exception as error:  # noqa: BLE001 (cleanup after another failure)
        logging.warning("could not remove the temporary %s: %s", path, error)
