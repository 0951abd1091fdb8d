"""folder:, glob:, openimages_csv: sources on local files: ids, labels, exact bytes, failures, specs."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import os
import pickle
import threading

import numpy as np
import pytest
from PIL import Image

from distillery import imagenet
from pipelines.sources import ReadFailure, SourceExample, SourceSpecError, iterate_source, open_source
from pipelines.url_fetch import FetchSettings


def jpeg_bytes(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def write_tree(root, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as file:
            file.write(data)


def read_all(source) -> list:
    return list(iterate_source(source))


@pytest.fixture
def synset_folder(tmp_path):
    files = {
        "n02123045/cat1.jpg": jpeg_bytes(1),
        "n02123045/cat2.jpg": jpeg_bytes(2),
        "n01440764/fish.JPEG": jpeg_bytes(3),
        "n01440764/deeper/fish2.jpg": jpeg_bytes(4),
    }
    write_tree(tmp_path / "train", files)
    write_tree(tmp_path / "train", {"README.txt": b"not in a class", "n01440764/.DS_Store": b"x"})
    return tmp_path / "train", files


def test_folder_synsets_map_to_imagenet_indices(synset_folder):
    root, files = synset_folder
    source = open_source(f"folder:{root}")
    items = read_all(source)
    assert [item.image_id for item in items] == sorted(files)  # README.txt and .DS_Store skipped
    assert all(isinstance(item, SourceExample) for item in items)
    by_id = {item.image_id: item for item in items}
    assert by_id["n02123045/cat1.jpg"].label == 281  # tabby cat
    assert by_id["n01440764/fish.JPEG"].label == 0  # tench
    assert by_id["n01440764/deeper/fish2.jpg"].label == 0
    assert imagenet.synset_to_index()["n02123045"] == 281
    for image_id, data in files.items():
        assert by_id[image_id].encoded == data
        assert by_id[image_id].origin == os.path.join(str(root), image_id)


def test_folder_other_names_use_sorted_order(tmp_path):
    files = {"zebra/a.png": jpeg_bytes(5), "ant/b.png": jpeg_bytes(6), "moth/c.png": jpeg_bytes(7)}
    write_tree(tmp_path, files)
    source = open_source(f"folder:{tmp_path}/")
    assert source.class_names == ("ant", "moth", "zebra")
    labels = {item.image_id: item.label for item in read_all(source)}
    assert labels == {"ant/b.png": 0, "moth/c.png": 1, "zebra/a.png": 2}


def test_folder_max_examples_and_shards_are_deterministic(synset_folder):
    root, files = synset_folder
    source = open_source(f"folder:{root}", max_examples=3, examples_per_shard=2)
    shards = source.shards()
    assert [len(shard.entries) for shard in shards] == [2, 1]
    expected = sorted(files)[:3]
    assert [item.image_id for item in read_all(source)] == expected
    # A Beam worker gets a pickled source (without the listing) and a pickled shard.
    worker_source = pickle.loads(pickle.dumps(source))
    assert worker_source._entries is None
    ids = [item.image_id for shard in shards for item in worker_source.read_shard(pickle.loads(pickle.dumps(shard)))]
    assert ids == expected


def test_vanished_file_is_a_read_failure_not_an_exception(synset_folder):
    root, files = synset_folder
    source = open_source(f"folder:{root}")
    shards = source.shards()  # listed here; the file vanishes before the shards are read
    os.remove(os.path.join(root, "n02123045/cat1.jpg"))
    items = [item for shard in shards for item in source.read_shard(shard)]
    assert len(items) == len(files)  # every listed input is accounted for
    failure = next(item for item in items if item.image_id == "n02123045/cat1.jpg")
    assert isinstance(failure, ReadFailure)
    assert "cannot read" in failure.reason and failure.origin.endswith("cat1.jpg")
    assert sum(isinstance(item, SourceExample) for item in items) == len(files) - 1


def test_glob_is_unlabeled_with_relative_ids(tmp_path):
    files = {"a1.jpg": jpeg_bytes(8), "b2.jpg": jpeg_bytes(9), "sub/c3.jpg": jpeg_bytes(10), "note.txt": b"x"}
    write_tree(tmp_path, files)
    items = read_all(open_source(f"glob:{tmp_path}/*.jpg"))
    assert [(item.image_id, item.label, item.encoded) for item in items] == [
        ("a1.jpg", -1, files["a1.jpg"]), ("b2.jpg", -1, files["b2.jpg"])]
    deep = read_all(open_source(f"glob:{tmp_path}/**.jpg"))
    assert [item.image_id for item in deep] == ["a1.jpg", "b2.jpg", "sub/c3.jpg"]


def write_csv(path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def test_openimages_csv_with_image_dir(tmp_path):
    files = {"000002b66c9c498e.jpg": jpeg_bytes(11), "000002b97e5471a0.jpg": jpeg_bytes(12)}
    write_tree(tmp_path / "images", files)
    write_csv(tmp_path / "ids.csv", ["ImageID", "Subset"],
              [["000002b66c9c498e", "train"], ["000002b97e5471a0", "train"], ["0000048549557964", "train"]])
    items = read_all(open_source(f"openimages_csv:{tmp_path}/ids.csv:{tmp_path}/images"))
    assert [item.image_id for item in items] == ["000002b66c9c498e", "000002b97e5471a0", "0000048549557964"]
    assert items[0].encoded == files["000002b66c9c498e.jpg"] and items[0].label == -1
    assert items[1].encoded == files["000002b97e5471a0.jpg"]
    assert isinstance(items[2], ReadFailure)  # listed in the CSV, missing on disk
    assert items[2].origin == f"{tmp_path}/images/0000048549557964.jpg"


def test_openimages_csv_with_relative_path_column(tmp_path):
    files = {"pics/x.jpg": jpeg_bytes(13)}
    write_tree(tmp_path, files)
    write_csv(tmp_path / "list.csv", ["ImageID", "path"], [["img-x", "pics/x.jpg"]])
    (item,) = read_all(open_source(f"openimages_csv:{tmp_path}/list.csv"))
    assert (item.image_id, item.encoded, item.label) == ("img-x", files["pics/x.jpg"], -1)


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_openimages_csv_with_url_column(tmp_path, http_server):
    www, base_url = http_server
    served, local = jpeg_bytes(14), jpeg_bytes(15)
    (www / "a.jpg").write_bytes(served)
    (tmp_path / "b.jpg").write_bytes(local)
    write_csv(tmp_path / "urls.csv", ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL"], [
        ["id-a", "train", f"{base_url}/a.jpg", "x"],
        ["id-missing", "train", f"{base_url}/missing.jpg", "x"],
        ["id-b", "train", f"file://{tmp_path}/b.jpg", "x"],
        ["id-refused", "train", "http://127.0.0.1:9/nothing.jpg", "x"],
    ])
    # The test server is on 127.0.0.1, which a URL list may name only with --allow_private_urls.
    items = read_all(open_source(f"openimages_csv:{tmp_path}/urls.csv",
                                 fetch_settings=FetchSettings(allow_private_urls=True, timeout_seconds=5.0)))
    assert [item.image_id for item in items] == ["id-a", "id-missing", "id-b", "id-refused"]
    assert isinstance(items[0], SourceExample) and items[0].encoded == served
    assert isinstance(items[1], ReadFailure) and "404" in items[1].reason
    assert isinstance(items[2], ReadFailure) and "scheme 'file' is not allowed" in items[2].reason
    assert isinstance(items[3], ReadFailure) and items[3].origin == "http://127.0.0.1:9/nothing.jpg"
    refused = read_all(open_source(f"openimages_csv:{tmp_path}/urls.csv"))[0]
    assert isinstance(refused, ReadFailure) and "a loopback address" in refused.reason


@pytest.mark.parametrize("spec, error, fragment", [
    ("nonsense:/tmp", SourceSpecError, "unknown source scheme"),
    ("folder", SourceSpecError, "not 'scheme:argument'"),
    ("folder:/no/such/dir", FileNotFoundError, "/no/such/dir"),
    ("glob:/no/such/dir/*.jpg", FileNotFoundError, "no file matches"),
    ("openimages_csv:/no/such.csv", FileNotFoundError, "/no/such.csv"),
])
def test_bad_specs_name_the_spec(spec, error, fragment):
    with pytest.raises(error) as raised:
        open_source(spec)
    assert spec in str(raised.value) and fragment in str(raised.value)


def test_csv_without_image_column_or_dir_is_rejected(tmp_path):
    write_csv(tmp_path / "bad.csv", ["ImageID", "Subset"], [["a", "train"]])
    spec = f"openimages_csv:{tmp_path}/bad.csv"
    with pytest.raises(SourceSpecError, match="neither a path column"):
        open_source(spec)
    write_csv(tmp_path / "noid.csv", ["Name"], [["a"]])
    with pytest.raises(SourceSpecError, match="no ImageID column"):
        open_source(f"openimages_csv:{tmp_path}/noid.csv:{tmp_path}")


def test_empty_folder_and_bad_max_examples(tmp_path):
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "loose.jpg").write_bytes(jpeg_bytes(16))
    with pytest.raises(SourceSpecError, match="no files in class sub-folders"):
        open_source(f"folder:{tmp_path}")
    with pytest.raises(SourceSpecError, match="max_examples"):
        open_source(f"glob:{tmp_path}/*.jpg", max_examples=0)


def test_beam_pipeline_reads_all_shards(synset_folder):
    """The intended Beam shape: Create(shards) | Reshuffle | FlatMap(read_shard), on the FnApiRunner."""
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # pylint: disable=import-outside-toplevel
    from apache_beam.testing.util import assert_that, equal_to  # pylint: disable=import-outside-toplevel
    root, files = synset_folder
    source = open_source(f"folder:{root}", examples_per_shard=1)
    assert len(source.shards()) == len(files)
    expected = [(image_id, 281 if image_id.startswith("n02123045") else 0, data) for image_id, data in files.items()]
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        read = (pipeline
                | "Shards" >> beam.Create(source.shards())
                | "Reshuffle" >> beam.Reshuffle()
                | "Read" >> beam.FlatMap(source.read_shard)
                | "Values" >> beam.Map(lambda item: (item.image_id, item.label, item.encoded)))
        assert_that(read, equal_to(expected))
