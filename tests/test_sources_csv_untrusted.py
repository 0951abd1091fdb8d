"""openimages_csv: lists from outside: ImageIDs that are not plain names, paths that leave their folder
(`..`, absolute, symlinks out, other schemes) and private URLs are read failures with their reason.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_sources_csv_untrusted.py
"""

from __future__ import annotations

import csv
import os
import pickle

import pytest

from pipelines import path_checks
from pipelines.sources import ReadFailure, SourceExample, iterate_source, open_source
from pipelines.url_fetch import FetchSettings


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def by_id(source) -> dict:
    return {item.image_id: item for item in iterate_source(source)}


@pytest.fixture
def tree(tmp_path):
    """tmp/lists/images/{good.jpg, out.jpg -> ../../secret.jpg, linked/ -> ../../outside/}, tmp/secret.jpg."""
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.jpg").write_bytes(b"outside")
    images = tmp_path / "lists" / "images"
    images.mkdir(parents=True)
    (images / "good.jpg").write_bytes(b"good")
    os.symlink("../../secret.jpg", images / "out.jpg")
    os.symlink("../../outside", images / "linked")
    return tmp_path


def test_image_ids_must_be_plain_names(tree):
    lists = tree / "lists"
    ids = ["good", "out", "../secret", "linked/x", "/etc/passwd", "x\x00y", "..", "a\\b", ""]
    write_csv(lists / "ids.csv", ["ImageID"], [[image_id] for image_id in ids])
    items = list(iterate_source(open_source(f"openimages_csv:{lists}/ids.csv:{lists}/images")))
    assert [item.image_id for item in items] == ids
    assert isinstance(items[0], SourceExample) and items[0].encoded == b"good"
    assert isinstance(items[1], ReadFailure) and "is outside" in items[1].reason  # a symlink out of IMAGE_DIR
    reasons = {item.image_id: item.reason for item in items[2:]}
    assert all(isinstance(item, ReadFailure) for item in items[2:])
    assert "holds a path separator" in reasons["../secret"] and "holds '..'" in reasons[".."]
    assert "holds a path separator" in reasons["linked/x"] and "holds a path separator" in reasons["/etc/passwd"]
    assert "holds a path separator" in reasons["a\\b"]
    assert "holds a NUL character" in reasons["x\x00y"] and "is empty" in reasons[""]


def test_path_column_must_stay_in_the_csvs_folder(tree):
    lists = tree / "lists"
    write_csv(lists / "paths.csv", ["ImageID", "path"], [
        ["relative", "images/good.jpg"],
        ["absolute-inside", str(lists / "images" / "good.jpg")],
        ["dot-dot", "../secret.jpg"],
        ["absolute-outside", str(tree / "secret.jpg")],
        ["symlink-out", "images/out.jpg"],
        ["symlinked-folder", "images/linked/x.jpg"],
        ["file-url", f"file://{tree}/secret.jpg"],
        ["other-bucket", "gs://somebody-else/x.jpg"],
        ["no-path", ""],
    ])
    items = by_id(open_source(f"openimages_csv:{lists}/paths.csv"))
    assert items["relative"].encoded == b"good" and items["absolute-inside"].encoded == b"good"
    for image_id in ("dot-dot", "absolute-outside", "symlink-out", "symlinked-folder"):
        assert isinstance(items[image_id], ReadFailure), image_id
        assert f"is outside {lists}/" in items[image_id].reason, items[image_id].reason
    assert "scheme 'file' is not allowed" in items["file-url"].reason
    assert "one is on gs://, the other is not" in items["other-bucket"].reason
    assert "neither a path nor a URL" in items["no-path"].reason


def test_gcs_paths_are_checked_lexically():
    assert path_checks.inside("gs://bucket/lists", "gs://bucket/lists/a/b.jpg") == "gs://bucket/lists/a/b.jpg"
    assert path_checks.inside("gs://bucket/lists/", "gs://bucket/lists/./a/../b.jpg") == "gs://bucket/lists/b.jpg"
    for outside in ("gs://bucket/lists/../other/b.jpg", "gs://bucket/listsevil/b.jpg", "gs://other/lists/b.jpg",
                    "gs://bucket/lists", "/bucket/lists/b.jpg"):
        with pytest.raises(path_checks.PathRefused):
            path_checks.inside("gs://bucket/lists", outside)


def test_url_rows_honour_the_fetch_settings_also_after_pickling(tmp_path):
    # Port 9 on 127.0.0.1 (discard): refused by the address check before any connection without the flag,
    # a connection error with it. Either way a read failure, never an exception.
    write_csv(tmp_path / "urls.csv", ["ImageID", "OriginalURL"], [["a", "http://127.0.0.1:9/a.jpg"],
                                                                  ["b", "ftp://127.0.0.1/b.jpg"]])
    strict = open_source(f"openimages_csv:{tmp_path}/urls.csv")
    (refused, ftp) = iterate_source(strict)
    assert "a loopback address (--allow_private_urls allows it)" in refused.reason
    assert "scheme 'ftp' is not allowed" in ftp.reason
    settings = FetchSettings(allow_private_urls=True, timeout_seconds=2.0)
    lenient = pickle.loads(pickle.dumps(open_source(f"openimages_csv:{tmp_path}/urls.csv", fetch_settings=settings)))
    assert lenient.fetch_settings == settings
    (failed, _) = iterate_source(lenient)
    assert isinstance(failed, ReadFailure) and "loopback" not in failed.reason
