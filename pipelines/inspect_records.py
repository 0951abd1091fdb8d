"""distillery-inspect: print soft-label records as JSON lines.

One JSON object a line: image_id, label, teachers, and views, each with its crop box, flip flag and the
teacher's top classes with their probabilities (exact at temperature 1; see distillery/records.py).

    distillery-inspect 'runs/demo/soft_labels/labelled-*' --limit=3 --top=3 --class_names=imagenet
    python -m pipelines.inspect_records 'runs/demo/soft_labels/labelled-*' --limit=3
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

from absl import app, flags

from distillery import cli, imagenet, records

_LIMIT = flags.DEFINE_integer("limit", None, "Print at most this many records.", lower_bound=0)
_TOP = flags.DEFINE_integer("top", 5, "Classes printed per view (at most the stored top-k).", lower_bound=1)
_CLASS_NAMES = flags.DEFINE_string(
    "class_names", None, "Add class names: 'imagenet' or a text file with one name a line, in class order.")


def load_class_names(spec: str | None) -> Sequence[str] | None:
    """Class names from 'imagenet' or a text file; None when not asked for.

    Raises:
      FileNotFoundError: naming the file when it does not exist.
    """
    if not spec:
        return None
    if spec == "imagenet":
        return imagenet.class_names()
    try:
        with open(spec, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"--class_names: no such file {spec!r}") from None


def record_summary(record: records.SoftLabelRecord, top: int, class_names: Sequence[str] | None = None) -> dict:
    """The JSON-ready view of one record that distillery-inspect prints."""
    views = []
    for view in range(record.num_views):
        best = record.top_probabilities(view)[:top]
        top_list = []
        for class_id, probability in best:
            entry = [class_id, round(probability, 6)]
            if class_names is not None:
                entry.append(class_names[class_id] if class_id < len(class_names) else "?")
            top_list.append(entry)
        views.append({"crop": [round(float(v), 5) for v in record.crops[view]], "flip": bool(record.flips[view]),
                      "top": top_list})
    return {"image_id": record.image_id, "label": record.label, "teachers": list(record.teachers), "views": views}


def inspect(pattern: str, limit: int | None, top: int, class_names: Sequence[str] | None = None,
            out: TextIO = sys.stdout) -> int:
    """Writes one JSON line per record of `pattern` to `out`; returns how many."""
    count = 0
    for record in records.read_records(pattern, limit=limit):
        out.write(json.dumps(record_summary(record, top, class_names)) + "\n")
        count += 1
    return count


def summaries(pattern: str, limit: int | None = None, top: int = 5) -> Iterator[dict]:
    """The summaries of `pattern` as dicts (what tests and notebooks use)."""
    for record in records.read_records(pattern, limit=limit):
        yield record_summary(record, top)


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: distillery-inspect GLOB [--limit=N] [--top=K] [--class_names=imagenet|FILE]")
    try:
        inspect(argv[1], _LIMIT.value, _TOP.value, load_class_names(_CLASS_NAMES.value))
    except (FileNotFoundError, records.RecordError) as error:
        sys.exit(f"distillery-inspect: {error}")
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        sys.stderr.close()


def run_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    run_main()
