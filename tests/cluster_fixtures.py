"""Shared by the manifest tests that train (not a test module): tiny records and the `--set` parameters that
shrink a rendered training job to a few seconds, so that its own arguments run unchanged."""

import io

import numpy as np
from PIL import Image

from distillery import records, views


def write_tiny_records(path, count, num_classes=4, seed=0):
    """`count` soft-label records of 24x24 PNG images with made-up teacher logits (2 views, top-2)."""
    rng = np.random.default_rng(seed)
    batch = []
    for index in range(count):
        image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        image_id = f"img{seed}-{index}"
        crops, flips = views.sample_views(image_id, 0, 2, 24, 24)
        full_logits = rng.normal(size=(2, num_classes)).astype(np.float32)
        batch.append(records.make_record(image_id, index % num_classes, ["made_up"], crops, flips, full_logits, 2,
                                         encoded_image=buffer.getvalue()))
    records.write_records(str(path), batch)


def tiny_training(tmp_path):
    """Records under tmp_path and the `--set` parameters of a 3-step run on them (global batch 8)."""
    write_tiny_records(tmp_path / "train-00000-of-00001", 16)
    write_tiny_records(tmp_path / "eval-00000-of-00001", 8, seed=1)
    return {"train_glob": str(tmp_path / "train-*"), "eval_glob": str(tmp_path / "eval-*"),
            "model_dir": str(tmp_path / "model"), "student": "small_cnn", "width": "0.25", "image_size": "32",
            "steps": "3", "batch_size": "8", "checkpoint_every": "0", "log_every": "1", "shuffle_buffer": "16"}
