"""Where an extraction writes, and how one work unit's output is committed so that a rerun can resume.

Every input work unit (a shard of the source, named by a key derived from it) is committed on its own:

    PREFIX-KEY.tfrecord          its records, in input order (written to a temporary name, then renamed)
    PREFIX.shards/KEY.json       its manifest: record file, record count, counters, dead letters; written
                                 last, so a shard is done exactly when its manifest exists
    PREFIX.summary.json          the run's summary: the exact record files with their counts, the counters
    DEAD_LETTER                  every shard's dead letters, in shard-key order

A prefix that already holds any of these is refused unless the job is told to `--overwrite` (everything
under the prefix is removed first) or to `--resume` (committed shards are kept and skipped). Local paths
and gs:// go through Beam's FileSystems.

    python -c "from pipelines import shard_output as s; print(s.existing_outputs('/tmp/soft/photos'))"
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import gcs
from pipelines.tfrecord_format import frame_record

_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")


_MAX_KEY_LENGTH = 120


def shard_key(text: str) -> str:
    """A file-name-safe key for a work unit, one per distinct `text`, stable across runs.

    A safe text of at most 120 characters is its own key. Any other (a path: '/' and other unsafe
    characters become '_'; or a long one) keeps the end of its safe spelling, where the file names differ,
    and ends with 16 hex digits of the text's sha256: 'a/b' and 'a_b', or two long paths that differ only in
    the file name, must not write each other's output. Never empty, never hidden.
    """
    safe = _KEY_CHARACTERS.sub("_", text).strip("._-")
    if safe and safe == text and len(safe) <= _MAX_KEY_LENGTH:
        return safe
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    tail = safe[-(_MAX_KEY_LENGTH - len(digest) - 1):].lstrip("._-")
    return f"{tail}-{digest}" if tail else digest


def records_path(prefix: str, key: str) -> str:
    """The record file of one work unit."""
    return f"{prefix}-{key}.tfrecord"


def manifests_dir(prefix: str) -> str:
    """The folder of the per-shard manifests (outside the PREFIX-* record glob)."""
    return f"{prefix}.shards"


def manifest_path(prefix: str, key: str) -> str:
    """The manifest of one work unit: its presence is the shard's commit."""
    return f"{manifests_dir(prefix)}/{key}.json"


def summary_path(prefix: str) -> str:
    """The run summary (outside the PREFIX-* record glob)."""
    return prefix + ".summary.json"


def _prepare(path: str) -> None:
    if gcs.is_gcs_path(path):
        gcs.use_emulator_credentials()


def _matches(pattern: str) -> list[str]:
    _prepare(pattern)
    try:
        return sorted(metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # pylint: disable=broad-except  # Beam raises when a local folder is missing
        return []


def _sibling_prefixes(prefix: str) -> list[str]:
    """Other runs' prefixes that extend this one (PREFIX-small beside PREFIX): those with a summary or a
    manifests folder of their own."""
    summaries = [path[:-len(".summary.json")] for path in _matches(prefix + "-*.summary.json")]
    manifests = [path.rsplit("/", 1)[0][:-len(".shards")] for path in _matches(prefix + "-*.shards/*")]
    return sorted(set(summaries + manifests))


def _is_folder(path: str) -> bool:
    return "://" not in path and os.path.isdir(path)


def existing_outputs(prefix: str) -> list[str]:
    """Every file an earlier run left under `prefix`: record files, manifests, the summary.

    PREFIX-* also matches what another run under a longer prefix wrote (PREFIX-small-KEY.tfrecord, its
    summary and manifests): those are not this prefix's, so neither refused nor removed here, and folders
    never are (a run writes files there only).
    """
    siblings = _sibling_prefixes(prefix)
    found = [path for path in _matches(prefix + "-*")
             if not _is_folder(path) and not any(path.startswith((sibling + "-", sibling + "."))
                                                 for sibling in siblings)]
    found += _matches(manifests_dir(prefix) + "/*")
    found += [path for path in (summary_path(prefix),) if FileSystems.exists(path)]
    return found


def remove_outputs(prefix: str, dead_letter: str | None = None) -> int:
    """Deletes what `existing_outputs` finds (and the dead-letter file); returns how many files went."""
    paths = existing_outputs(prefix) + ([dead_letter] if dead_letter and FileSystems.exists(dead_letter) else [])
    if paths:
        FileSystems.delete(paths)
    return len(paths)


def remove_temporaries(prefix: str) -> int:
    """Deletes the temporary files that work units interrupted mid-write left; returns how many."""
    paths = _matches(manifests_dir(prefix) + "/*.tmp-*")
    if paths:
        FileSystems.delete(paths)
    return len(paths)


def check_writable(prefix: str) -> None:
    """Creates the prefix's folder where it is local and fails naming it when files cannot be made there.

    Raises:
      OSError: the folder cannot be created or written.
    """
    _prepare(prefix)
    probe = f"{manifests_dir(prefix)}/.write-probe-{uuid.uuid4().hex}"
    with FileSystems.create(probe) as file:
        file.write(b"")
    FileSystems.delete([probe])


class ShardWriter:
    """Streams one work unit's records to a temporary file; `commit` renames it and writes the manifest.

    A writer that is never committed leaves only a temporary file inside PREFIX.shards/, which no reader
    looks at and the next attempt replaces.
    """

    def __init__(self, prefix: str, key: str):
        self.prefix, self.key = prefix, key
        self.records = 0
        self._temporary = f"{manifests_dir(prefix)}/{key}.tfrecord.tmp-{uuid.uuid4().hex}"
        _prepare(prefix)
        self._file = FileSystems.create(self._temporary, mime_type="application/octet-stream",
                                        compression_type=CompressionTypes.UNCOMPRESSED)

    def write(self, serialized: bytes) -> None:
        self._file.write(frame_record(serialized))
        self.records += 1

    def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Renames the records into place, then writes the manifest (the commit); returns the manifest."""
        self._file.close()
        final = records_path(self.prefix, self.key)
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([self._temporary], [final])
        manifest = {"key": self.key, "file": final, "records": self.records, **manifest}
        write_json(manifest_path(self.prefix, self.key), manifest)
        return manifest

    def abort(self) -> None:
        """Drops the temporary file (a failed attempt)."""
        try:
            self._file.close()
        finally:
            if FileSystems.exists(self._temporary):
                FileSystems.delete([self._temporary])


def write_json(path: str, value: Any) -> None:
    """JSON to `path`, written to a temporary name first and renamed, so a reader never sees half a file."""
    write_text(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def write_text(path: str, text: str) -> None:
    """Text to `path` through a temporary name and a rename (local or gs://)."""
    _prepare(path)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temporary, mime_type="text/plain", compression_type=CompressionTypes.UNCOMPRESSED) as file:
        file.write(text.encode("utf-8"))
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary], [path])


def read_json(path: str) -> Any:
    """The JSON value of a file (local or gs://)."""
    _prepare(path)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
        return json.loads(file.read().decode("utf-8"))


def read_manifest(prefix: str, key: str) -> dict[str, Any] | None:
    """The manifest of a committed work unit, or None when it is not committed."""
    path = manifest_path(prefix, key)
    _prepare(path)
    if not FileSystems.exists(path):
        return None
    return read_json(path)


def remove_stale_units(prefix: str, keys: Iterable[str]) -> list[str]:
    """Removes the work units committed under `prefix` whose key is not in `keys` (this run's): what a
    --resume finds of an earlier run that its source no longer yields, or that an older version named
    otherwise (paths were keyed without a digest before 2026-12-03). Their manifests go, and their record
    files, named from the manifest's own name (never from its contents), so that PREFIX-* holds this run's
    records only. Returns the record files removed. Keys never start with '_' (`shard_key`): _run.json
    and _settings.json are not units."""
    keep = set(keys)
    stale = []
    for path in _matches(manifests_dir(prefix) + "/*.json"):
        name = path.rsplit("/", 1)[-1][:-len(".json")]
        if not name.startswith("_") and name not in keep:
            stale.append((path, records_path(prefix, name)))
    removed = [file for _, file in stale if FileSystems.exists(file)]
    if stale:
        FileSystems.delete(removed + [manifest for manifest, _ in stale])
    return removed


def finalize(prefix: str, dead_letter: str, manifests: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Writes the dead-letter file from every shard's manifest (in key order), removes the units of an
    earlier run that this one did not produce (`remove_stale_units`) and returns the totals:
    {"shards": [{"file", "records"}...], "counters": summed, "resumed_shards", "stale_files_removed",
    "teacher_runtimes": the distinct runtimes the shards' teachers ran on, sorted}."""
    ordered = sorted(manifests, key=lambda manifest: manifest["key"])
    stale = remove_stale_units(prefix, (manifest["key"] for manifest in ordered))
    lines = [line for manifest in ordered for line in manifest.get("dead_letters", ())]
    write_text(dead_letter, "".join(line + "\n" for line in lines))
    counters: dict[str, int] = {}
    for manifest in ordered:
        for name, value in manifest.get("counters", {}).items():
            counters[name] = counters.get(name, 0) + int(value)
    return {"shards": [{"file": manifest["file"], "records": manifest["records"]} for manifest in ordered],
            "counters": counters, "resumed_shards": sum(1 for manifest in ordered if manifest.get("resumed")),
            "stale_files_removed": stale,
            "teacher_runtimes": sorted({manifest["teacher_runtime"] for manifest in ordered if manifest.get("teacher_runtime")})}


def shard_files(summary: dict[str, Any]) -> Sequence[str]:
    """The record files a summary lists."""
    return [shard["file"] for shard in summary.get("shards", ())]
