"""ImageNet: the built-in MobileNetV2 teacher's soft labels (10 views, top-10, float16) distill a MobileNet V1
0.25/128 student, which is factorized and quantized to int8.

    distillery-extract $(python -c "import configs; from distillery import cli; r = configs.get('imagenet'); \
        print(' '.join(cli.to_flags(r.extract_config('labelled', 'gs://B/soft/train', 'gs://B/soft/train.dead.jsonl'))))")
    python -c "import configs; print(configs.get('imagenet', runlocal=True))"   # the shrunk recipe

Needs ImageNet prepared for TFDS (`TFDS_DATA_DIR`, the manual tars) and, at full size, a cluster:
1.28M images x 10 views through the teacher (docs/extract.md, "On a cluster"), then 100 epochs of the
student at a global batch of 1024 (docs/train.md). Expected top-1 of the student: not measured here.
MobileNet V1 0.25/128 trained on hard labels reaches 41.5% (Howard et al. 2017); distillation from a
stronger teacher is expected to add to that. The full recipe's training settings (5 epochs of linear
warmup, weight decay 4e-5 on SGD, label smoothing 0.1, an EMA of the weights at 0.9999, bfloat16 on
GPU clusters; docs/train.md "Recipe settings") are starting points from the MobileNet literature, not
measured here. `runlocal` shrinks every part to a few hundred images and the training to a few steps,
for a laptop with ImageNet's validation split prepared, and leaves those settings off.
"""

from __future__ import annotations

from configs.recipe import DataPart, Recipe, StudentRun

TEACHER = "builtin:mobilenet_v2_imagenet"
TRAIN_IMAGES = 1_281_167
GLOBAL_BATCH = 1024
EPOCHS = 100
WARMUP_EPOCHS = 5
EVAL_EVERY_EPOCHS = 2  # 50,000 validation images every ~2,500 steps: best/ follows the run closely enough


def students() -> tuple[StudentRun, ...]:
    """The hard-label baseline and the distilled student, on the labelled part."""
    return (StudentRun("hard", ("labelled",), alpha=1.0, temperature=1.0),
            StudentRun("distilled", ("labelled",), alpha=0.5, temperature=1.0))


def settings(runlocal: bool) -> dict:
    """The job settings shared by the ImageNet recipes (this one and imagenet_openimages)."""
    steps = 20 if runlocal else EPOCHS * TRAIN_IMAGES // GLOBAL_BATCH
    return dict(
        extract={"top_k": 10, "logit_dtype": "float16", "store_image_max_side": 320, "batch_size": 64},
        train={"student": "mobilenet_v1", "width": 0.25, "image_size": 128,
               "batch_size": 32 if runlocal else GLOBAL_BATCH, "steps": steps,
               "learning_rate": 0.05 if runlocal else 0.4, "optimizer": "sgd",
               "checkpoint_every": 0 if runlocal else 2000, "log_every": 5 if runlocal else 500,
               "eval_every": 10 if runlocal else EVAL_EVERY_EPOCHS * TRAIN_IMAGES // GLOBAL_BATCH,
               "shuffle_buffer": 256 if runlocal else 16384,
               **({} if runlocal else {"warmup_steps": WARMUP_EPOCHS * TRAIN_IMAGES // GLOBAL_BATCH,
                                       "weight_decay": 4e-5, "label_smoothing": 0.1, "ema_decay": 0.9999,
                                       "mixed_precision": "bfloat16"})},
        factorize={"latency_reduction": 0.2, "selection_rounds": 1 if runlocal else 3},
        finetune={"mode": "layerwise", "steps": 10 if runlocal else 5000, "final_steps": 5 if runlocal else 5000,
                  "batch_size": 32 if runlocal else 256, "learning_rate": 1e-3},
        quantize={"mode": "int8", "calibration_steps": 16 if runlocal else 500},
        benchmark={"runs": 5 if runlocal else 200, "rounds": 1 if runlocal else 5, "profile": not runlocal},
    )


def get_config(runlocal: bool = False) -> Recipe:
    """The ImageNet recipe (`runlocal`: a few hundred validation images, a few steps)."""
    if runlocal:
        parts = (DataPart("labelled", "tfds:imagenet2012:validation[:256]", views=10),
                 DataPart("eval", "tfds:imagenet2012:validation[256:512]", views=1))
    else:
        parts = (DataPart("labelled", "tfds:imagenet2012:train", views=10),
                 DataPart("eval", "tfds:imagenet2012:validation", views=1))
    return Recipe(name="imagenet", teachers=(TEACHER,), parts=parts, eval_part="eval", students=students(),
                  **settings(runlocal))
