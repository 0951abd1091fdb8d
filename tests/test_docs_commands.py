"""The `distillery-extract` command lines the docs show still parse and pass the job's own flag checks.

Each command in a fenced block of README.md and docs/*.md is split as a shell would, its flags (before
`--`) parsed by the command's own absl flags and its settings checked by `ExtractConfig.validate` in one
child process; sources and teachers are not opened (gs:// buckets and TFDS datasets do not exist here).
A flag renamed or made mandatory (as --store_image_max_side was for tfds sources) fails this test
instead of the users who copy the docs.

    pytest tests/test_docs_commands.py
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SEPARATORS = {"&&", "||", ";", "|"}

_CHECK = """
import json, sys
from absl import flags
from pipelines import extract
failures = []
for name, argv in json.loads(sys.stdin.read()):
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["distillery-extract", *argv])
        extract.config_from_flags().validate()
    except Exception as error:  # every failure is reported, with its command
        failures.append([name, f"{type(error).__name__}: {error}"])
print(json.dumps(failures))
"""


def documented_extract_commands() -> list[tuple[str, list[str]]]:
    """(where, flags before `--`) of every `distillery-extract` command in a fenced block of the docs."""
    commands = []
    for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if "distillery-extract " not in line or "[--" in line:  # "[--" : the synopsis of the flags
                    continue
                tokens = shlex.split(line.lstrip("$ "))
                start = next(index for index, token in enumerate(tokens) if token.endswith("distillery-extract"))
                arguments = []
                for token in tokens[start + 1:]:
                    if token == "--" or token in _SEPARATORS:
                        break
                    arguments.append(token)
                if arguments and all(argument.startswith("--") for argument in arguments):
                    commands.append((f"{os.path.relpath(path, ROOT)}: {line.strip()[:80]}", arguments))
    return commands


def test_the_documented_extract_commands_pass_the_flag_checks():
    commands = documented_extract_commands()
    sources = {argument.split("=", 1)[1].split(":", 1)[0] for _, arguments in commands for argument in arguments
               if argument.startswith("--source=")}
    # The Dataflow and Flink commands of extract.md, the cluster's, the demo's and the quick start's at least.
    assert len(commands) >= 6 and {"tfds", "glob", "folder", "tfrecord"} <= sources
    completed = subprocess.run([sys.executable, "-c", _CHECK], input=json.dumps(commands), capture_output=True,
                               text=True, cwd=ROOT, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout.splitlines()[-1]) == []
