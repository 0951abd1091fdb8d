"""distillery.cli: flags generated from config dataclasses, and every console script's --help lists its flags."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import shutil
import subprocess
import sys

import pytest
from absl import flags

from distillery import cli


def _parse_pair(text: str) -> tuple[int, int]:
    left, right = text.split("x")
    return int(left), int(right)


@dataclasses.dataclass(frozen=True)
class _Example:
    path: str = cli.option(flag="input", help="Required: no default.")
    steps: int = cli.option(10, lower_bound=1, help="An integer.")
    rate: float = cli.option(0.5, help="A float.")
    fast: bool = cli.option(False, help="A boolean.")
    mode: str = cli.option("a", choices=("a", "b"), help="An enum.")
    limit: int | None = cli.option(None, help="Optional.")
    names: tuple[str, ...] = cli.option((), flag="name", help="Repeatable.")
    shape: tuple[int, int] | None = cli.option(None, parse=_parse_pair, spell=lambda pair: f"{pair[0]}x{pair[1]}",
                                               help="Parsed from WxH.")
    size: tuple[int, int] | None = cli.option(None, parse=_parse_pair, help="Parsed, with no spelling.")
    internal: int = 3  # not a flag


def _parse(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    cli.define_flags(_Example, flag_values=values, module_name="example")
    values(["prog", *argv])
    return values


def test_flags_take_their_defaults_from_the_dataclass_and_build_it_back():
    values = _parse(["--input=/data"])
    assert cli.from_flags(_Example, flag_values=values) == _Example(path="/data")
    # Every field made with option() is a flag of that name, with the field's default; `internal` is not.
    assert {name: values[name].default for name in values} == {
        "input": None, "steps": 10, "rate": 0.5, "fast": False, "mode": "a", "limit": None, "name": None,
        "shape": None, "size": None}


def test_each_flag_type_parses_into_its_field():
    values = _parse(["--input=x", "--steps=7", "--rate=0.25", "--fast", "--mode=b", "--limit=3",
                     "--name=p", "--name=q", "--shape=4x5"])
    config = cli.from_flags(_Example, flag_values=values, internal=9)
    assert config == _Example("x", 7, 0.25, True, "b", 3, ("p", "q"), (4, 5), internal=9)
    assert cli.from_flags(_Example, flag_values=_parse(["--input=x", "--size=1x2"])).size == (1, 2)


@pytest.mark.parametrize("argv, message", [
    ([], "--input must have a value"),
    (["--input=x", "--steps=0"], "not a positive integer"),
    (["--input=x", "--mode=c"], "one of"),
])
def test_required_bounds_and_choices_are_enforced_by_absl(argv, message):
    with pytest.raises(flags.Error, match=message):
        _parse(argv)


def test_flag_of_names_the_flag_of_a_field():
    assert cli.flag_of(_Example, "path") == "--input"
    assert cli.flag_of(_Example, "steps") == "--steps"


def test_a_parsed_field_must_default_to_none():
    @dataclasses.dataclass
    class Bad:
        size: tuple[int, int] = cli.option((1, 1), parse=_parse_pair, help="x")

    with pytest.raises(TypeError, match="default must be None"):
        cli.define_flags(Bad, flag_values=flags.FlagValues(), module_name="bad")


def _expected_flags() -> dict[str, set[str]]:
    """Each console script's own flags, from the config dataclasses they are generated from."""
    from benchmark import job  # noqa: PLC0415 (TensorFlow-heavy imports, only for this test)
    from cluster import beam_submit
    from compress import factorize_job, finetune, quantize_job
    from pipelines import extraction
    from pipelines_kfp import pipeline_config
    from trainer import train_config

    def names(config_class, skip=()):
        return {cli.flag_name(field) for field in cli.flag_fields(config_class) if field.name not in skip}

    return {
        "distillery-train": names(train_config.TrainConfig) | {"strategy"},
        "distillery-extract": names(extraction.ExtractConfig) | {"beam_pipeline_options", "dry_run"},
        "distillery-factorize": names(factorize_job.JobConfig) | names(finetune.FinetuneConfig, ["train_pattern"]),
        "distillery-quantize": names(quantize_job.QuantizeConfig),
        "distillery-benchmark": names(job.BenchmarkConfig) | {"beam_pipeline_options"},
        "distillery-inspect": {"limit", "top", "class_names"},
        "distillery-evaluate-beam": {"model", "eval", "output", "num_threads", "beam_pipeline_options"},
        "distillery-submit": (names(beam_submit.DataflowSettings) | names(beam_submit.FlinkSettings)
                              | {"overlay", "job", "set", "k8s_dir", "dry_run"}),
        "distillery-pipeline": names(pipeline_config.PipelineConfig),
    }


def _help_flags(script: str) -> tuple[int, set[str], str]:
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return result.returncode, set(re.findall(r"^  --(?:\[no\])?(\w+):", result.stdout, re.MULTILINE)), result.stdout


@pytest.mark.slow
def test_every_console_script_help_lists_its_own_flags():
    expected = _expected_flags()
    bin_dir = os.path.dirname(sys.executable)
    scripts = {name: shutil.which(name, path=bin_dir) for name in expected}
    missing = [name for name, path in scripts.items() if path is None]
    assert not missing, f"console scripts not installed next to {sys.executable}: {missing} (run make install)"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        helps = dict(zip(scripts, pool.map(_help_flags, scripts.values())))
    for name, (_, listed, stdout) in helps.items():  # absl's --help exits with 1
        assert listed, (name, stdout[-2000:])
        assert listed == expected[name], (name, sorted(listed ^ expected[name]))
    assert {"student", "steps"} <= helps["distillery-train"][1]


def test_to_flags_is_the_command_line_that_builds_the_config_back():
    config = _Example(path="/d", steps=3, fast=True, names=("a", "b"), limit=None, shape=(4, 5))
    argv = cli.to_flags(config)
    assert argv == ["--input=/d", "--steps=3", "--fast", "--name=a", "--name=b", "--shape=4x5"]
    assert cli.from_flags(_Example, flag_values=_parse(argv)) == config


def test_to_flags_refuses_a_parsed_field_it_cannot_spell():
    with pytest.raises(ValueError, match="--size"):
        cli.to_flags(_Example(path="/d", size=(2, 3)))


def test_to_flags_writes_the_first_fields_in_their_order_even_at_their_defaults():
    config = _Example(path="/d", steps=3, names=("a",))
    assert cli.to_flags(config, first=("rate", "path", "limit")) == ["--rate=0.5", "--input=/d", "--steps=3", "--name=a"]
    assert cli.to_flags(config, skip=("path",)) == ["--steps=3", "--name=a"]
    with pytest.raises(ValueError, match="internal"):
        cli.to_flags(config, first=("internal",))
