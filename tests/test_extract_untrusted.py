"""The extraction job on an untrusted openimages_csv: list served from 127.0.0.1: private URLs, slow and
oversized answers, image bombs and refused formats all end as dead letters with their reasons.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_extract_untrusted.py
"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import threading
import time

import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from extract_fixtures import encode, load_fake_teacher, photo
from PIL import Image
from test_images_untrusted import EPS, huge_black_png

from distillery import records
from pipelines import extraction

FILES = {
    "/photo.png": encode(photo(1)),
    "/bomb.png": huge_black_png(10_000),
    "/notes.eps": EPS,
    "/big.png": encode(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/drip.png":  # 8 bytes a second, for at most a few seconds
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(5):
                try:
                    self.wfile.write(b"\x89PNG\r\n\x1a\n")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(1.0)
            return
        body = FILES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture(autouse=True)
def pillow_limit(monkeypatch):
    """The job sets Pillow's process-wide bomb check from --max_image_pixels: restored after each test."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


@pytest.fixture
def url_list(tmp_path):
    """A CSV of URLs on a local server (and one ImageID that is a path)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=functools.partial(server.serve_forever, poll_interval=0.05), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rows = [["photo", f"{base}/photo.png"], ["bomb", f"{base}/bomb.png"], ["eps", f"{base}/notes.eps"],
            ["big", f"{base}/big.png"], ["drip", f"{base}/drip.png"], ["../photo", f"{base}/photo.png"]]
    with open(tmp_path / "list.csv", "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["ImageID", "OriginalURL"], *rows])
    yield tmp_path / "list.csv"
    server.shutdown()
    server.server_close()


def run(tmp_path, csv_path, name, **flags):
    config = extraction.ExtractConfig(source=f"openimages_csv:{csv_path}", teachers=("fake",),
                                      output=str(tmp_path / name / "soft"),
                                      dead_letter=str(tmp_path / name / "dead.jsonl"), batch_size=4, **flags)
    result = extraction.run(config, test_pipeline=BeamTestPipeline(runner=FnApiRunner()), teacher_loader=load_fake_teacher)
    written = sorted(record.image_id for record in records.read_records(config.output + "-*"))
    with open(config.dead_letter, encoding="utf-8") as file:
        dead = {letter["image_id"]: letter for letter in map(json.loads, file)}
    return result, written, dead


def test_without_the_flag_every_local_url_is_a_dead_letter(tmp_path, url_list):
    result, written, dead = run(tmp_path, url_list, "strict")
    assert written == [] and len(dead) == 6 and result.summary["balanced"]
    assert all(letter["stage"] == "read" for letter in dead.values())
    assert all("a loopback address" in dead[image_id]["reason"] for image_id in dead if image_id != "../photo")
    assert "holds a path separator" in dead["../photo"]["reason"]


def test_each_hostile_answer_is_a_dead_letter_with_its_reason(tmp_path, url_list):
    start = time.monotonic()
    result, written, dead = run(tmp_path, url_list, "lenient", allow_private_urls=True, fetch_timeout=1.5,
                                max_image_bytes=100_000, max_image_pixels=50_000_000)
    assert written == ["photo"] and sorted(dead) == ["../photo", "big", "bomb", "drip", "eps"]
    assert result.summary["balanced"]
    assert (dead["bomb"]["stage"], dead["eps"]["stage"]) == ("decode", "decode")
    assert "10000x10000 pixels is too large to decode (more than 50000000 pixels)" in dead["bomb"]["reason"]
    assert "image format EPS is not accepted" in dead["eps"]["reason"]
    assert dead["big"]["stage"] == "read" and "over the limit of 100000 bytes" in dead["big"]["reason"]
    assert dead["drip"]["stage"] == "read" and "deadline of 1.5 s passed" in dead["drip"]["reason"]
    assert time.monotonic() - start < 60
    assert Image.MAX_IMAGE_PIXELS == 50_000_000  # the worker's setup pointed Pillow's own check at the limit


def test_the_limits_are_flags_checked_up_front(tmp_path):
    for flags, message in [({"fetch_timeout": 0.0}, "--fetch_timeout"), ({"max_image_bytes": 0}, "--max_image_bytes"),
                           ({"max_image_pixels": 0}, "--max_image_pixels")]:
        config = extraction.ExtractConfig(source="folder:/nowhere", teachers=("fake",), output=str(tmp_path / "o"),
                                          dead_letter=str(tmp_path / "d.jsonl"), **flags)
        with pytest.raises(ValueError, match=message):
            config.validate()
    defaults = extraction.ExtractConfig(source="x", teachers=("fake",), output="o", dead_letter="d")
    assert (defaults.fetch_timeout, defaults.max_image_bytes, defaults.max_image_pixels) == (30.0, 32 * 2**20,
                                                                                             90_000_000)
    assert not defaults.allow_private_urls and not defaults.trust_saved_model
