"""Beam options on the command line: one rule for every Distillery command that runs a Beam job.

Beam options pass through untouched, either after `--` or inside one `--beam_pipeline_options` string
(split like a shell would, so `--experiments=a,b` and quoted values survive). absl drops the `--`
itself and leaves what follows it among the positional arguments, so a command with positional
arguments (distillery-benchmark MODEL.tflite ...) takes them up to the first argument that starts with
`-`: everything from there on is Beam's.

    python -c "from pipelines import beam_options; print(beam_options.split_argv(['a.tflite', '--project', 'p'], ''))"
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def split_argv(leftover: Sequence[str], options_string: str | None) -> tuple[list[str], list[str]]:
    """(positional arguments, Beam arguments) from what absl left over after parsing its flags.

    Args:
      leftover: argv[1:] as absl's app.run hands it to main (its own flags removed, `--` dropped).
      options_string: the value of --beam_pipeline_options.
    """
    leftover = [arg for arg in leftover if arg != "--"]
    first_option = next((index for index, arg in enumerate(leftover) if arg.startswith("-")), len(leftover))
    return leftover[:first_option], shlex.split(options_string or "") + leftover[first_option:]
