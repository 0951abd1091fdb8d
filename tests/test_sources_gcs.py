"""gs:// sources against gcp-storage-emulator on 127.0.0.1: exact bytes back, ids, labels, failures."""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

from pipelines.sources import ReadFailure, SourceExample, iterate_source, open_source


def jpeg_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def test_folder_and_glob_round_trip(gcs_emulator):
    bucket = gcs_emulator.create_bucket()
    files = {"n02123045/a.jpg": jpeg_bytes(1), "n02123045/b.jpg": jpeg_bytes(2), "n01440764/c.jpg": jpeg_bytes(3)}
    for relative, data in files.items():
        gcs_emulator.upload(f"gs://{bucket}/train/{relative}", data)
    gcs_emulator.upload(f"gs://{bucket}/trainers/n01440764/not-this.jpg", b"other prefix")

    items = list(iterate_source(open_source(f"folder:gs://{bucket}/train")))
    assert [(item.image_id, item.label, item.encoded) for item in items] == [
        ("n01440764/c.jpg", 0, files["n01440764/c.jpg"]),
        ("n02123045/a.jpg", 281, files["n02123045/a.jpg"]),
        ("n02123045/b.jpg", 281, files["n02123045/b.jpg"])]
    assert items[0].origin == f"gs://{bucket}/train/n01440764/c.jpg"

    globbed = list(iterate_source(open_source(f"glob:gs://{bucket}/train/n02123045/*.jpg", max_examples=1)))
    assert [(item.image_id, item.label, item.encoded) for item in globbed] == [("a.jpg", -1, files["n02123045/a.jpg"])]


def test_openimages_csv_and_missing_object(gcs_emulator):
    bucket = gcs_emulator.create_bucket()
    gcs_emulator.upload(f"gs://{bucket}/oi/images/0001.jpg", jpeg_bytes(4))
    gcs_emulator.upload(f"gs://{bucket}/oi/images/0002.jpg", jpeg_bytes(5))
    gcs_emulator.upload(f"gs://{bucket}/oi/ids.csv", b"ImageID,Subset\n0001,train\n0002,train\n0003,train\n")
    source = open_source(f"openimages_csv:gs://{bucket}/oi/ids.csv:gs://{bucket}/oi/images")
    gcs_emulator.client().bucket(bucket).blob("oi/images/0002.jpg").delete()  # vanishes after listing
    items = list(iterate_source(source))
    assert [item.image_id for item in items] == ["0001", "0002", "0003"]
    assert isinstance(items[0], SourceExample) and items[0].encoded == jpeg_bytes(4) and items[0].label == -1
    assert isinstance(items[1], ReadFailure) and items[1].origin == f"gs://{bucket}/oi/images/0002.jpg"
    assert isinstance(items[2], ReadFailure)


def test_tfrecord_and_idx_on_gcs(gcs_emulator, tmp_path):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    bucket = gcs_emulator.create_bucket()
    encoded = jpeg_bytes(6)
    local = str(tmp_path / "shard.tfrecord")
    with tf.io.TFRecordWriter(local) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[42])),
        })).SerializeToString())
    with open(local, "rb") as file:
        gcs_emulator.upload(f"gs://{bucket}/records/shard.tfrecord", file.read())
    (item,) = iterate_source(open_source(f"tfrecord:gs://{bucket}/records/*.tfrecord"))
    assert (item.image_id, item.label, item.encoded) == ("shard.tfrecord:0", 42, encoded)

    pixels = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8)
    images = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28) + pixels.tobytes()
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + bytes([6, 8])
    gcs_emulator.upload(f"gs://{bucket}/fmnist/t10k-images-idx3-ubyte.gz", gzip.compress(images))
    gcs_emulator.upload(f"gs://{bucket}/fmnist/t10k-labels-idx1-ubyte.gz", gzip.compress(labels))
    items = list(iterate_source(open_source(f"idx:gs://{bucket}/fmnist:test")))
    assert [(item.image_id, item.label) for item in items] == [("test/00000", 6), ("test/00001", 8)]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(items[1].encoded))), pixels[1])


def test_emulator_skips_beams_credential_search(gcs_emulator):
    """A fresh process reaches the emulator through FileSystems in well under Beam's ~26 s retry search."""
    bucket = gcs_emulator.create_bucket()
    gcs_emulator.upload(f"gs://{bucket}/x/one.jpg", b"1")
    script = textwrap.dedent(f"""
        import time
        from apache_beam.io.filesystems import FileSystems
        from pipelines import gcs
        gcs.use_emulator_credentials()
        start = time.monotonic()
        paths = [m.path for m in FileSystems.match(["gs://{bucket}/x/*"])[0].metadata_list]
        print(paths, round(time.monotonic() - start, 2))
    """)
    env = {name: value for name, value in os.environ.items() if name != "GOOGLE_APPLICATION_CREDENTIALS"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True)
    paths, seconds = result.stdout.strip().rsplit(" ", 1)
    assert paths == f"['gs://{bucket}/x/one.jpg']"
    assert float(seconds) < 5.0, result.stderr[-2000:]
