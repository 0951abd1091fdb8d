"""What a rendered manifest's Distillery containers would run: their arguments, expanded and parsed.

Kubernetes expands `$(NAME)` in a container's args from its environment (env values, envFrom and
configMapKeyRef entries of the ConfigMaps); each command's own flag definitions (the fields of its
config dataclass, distillery/cli.py) then parse them into the typed config the job would run with. So a
missing hyperparameter or a misspelt flag shows up offline, as a config that differs from the recipe's
(cluster/overlay_recipes.py) or a flag error naming it.

    python -c "from cluster import job_arguments as j, render; r = render.render_overlay('small'); \
      print(j.parse(next(r_ for r_ in r if r_['kind'] == 'JobSet'), r).config)"
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from cluster import pods
from distillery import cli

_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ArgumentsError(ValueError):
    """A container whose arguments its command would refuse; the message names the object and the flag."""


@dataclasses.dataclass
class ParsedCommand:
    """One container's command line, parsed the way its console script parses it."""

    command: str
    config: Any                                                   # the job's config dataclass
    positional: list[str] = dataclasses.field(default_factory=list)        # benchmark: the models
    pipeline_options: list[str] = dataclasses.field(default_factory=list)  # after `--` (extract)
    flags: dict[str, Any] = dataclasses.field(default_factory=dict)        # the command's own (train: strategy)


def configmap_data(resources: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """{ConfigMap name: its data} of the rendered objects."""
    return {resource["metadata"]["name"]: dict(resource.get("data", {}))
            for resource in resources if resource.get("kind") == "ConfigMap"}


def container_environment(container: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The variables `$(NAME)` can name: envFrom ConfigMaps, then env (literal values and configMapKeyRef)."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment.update(configmaps.get(source["configMapRef"]["name"], {}))
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = str(variable["value"])
        reference = variable.get("valueFrom", {}).get("configMapKeyRef")
        if reference and reference["key"] in configmaps.get(reference["name"], {}):
            environment[variable["name"]] = configmaps[reference["name"]][reference["key"]]
    return environment


def expand(argument: str, environment: Mapping[str, str]) -> str:
    """Kubernetes' expansion: `$(NAME)` of a defined variable becomes its value, `$$` a `$`, the rest stays."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return environment.get(match.group(1), match.group(0))
    return _VARIABLE.sub(replace, argument)


def expanded_args(container: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The container's args as the process receives them."""
    environment = container_environment(container, configmaps)
    return [expand(str(argument), environment) for argument in container.get("args", [])]


def _parse_flags(command: str, argv: Sequence[str], *config_classes: tuple[type, Sequence[str]],
                 extra: Mapping[str, str] | None = None) -> tuple[flags.FlagValues, list[str]]:
    flag_values, extra = flags.FlagValues(), extra or {}
    for config_class, skip in config_classes:
        cli.define_flags(config_class, skip=skip, flag_values=flag_values, module_name=command)
    for name in extra:
        flags.DEFINE_string(name, None, extra[name], flag_values=flag_values, module_name=command)
    try:
        remaining = flag_values([command, *argv])
    except flags.Error as error:
        raise ArgumentsError(f"{command}: {error}") from None
    return flag_values, remaining[1:]


def parse_command(command: str, argv: Sequence[str]) -> ParsedCommand:
    """`command argv...` parsed by that console script's flags.

    Raises:
        ArgumentsError: an unknown command, flag or value, or positional arguments where none are taken.
    """
    # Imported here: the job packages pull in TensorFlow and Beam, which rendering does not need.
    from benchmark.job import BenchmarkConfig
    from compress.factorize_job import JobConfig
    from compress.finetune import FinetuneConfig
    from compress.quantize_job import QuantizeConfig
    from pipelines.extraction import ExtractConfig
    from trainer.train_config import TrainConfig

    argv = list(argv)
    if command == "distillery-extract":
        cut = argv.index("--") if "--" in argv else len(argv)
        values, remaining = _parse_flags(command, argv[:cut], (ExtractConfig, ()))
        parsed = ParsedCommand(command, cli.from_flags(ExtractConfig, flag_values=values),
                               pipeline_options=argv[cut + 1:])
    elif command == "distillery-train":
        values, remaining = _parse_flags(command, argv, (TrainConfig, ()), extra={"strategy": "trainer/train.py's"})
        parsed = ParsedCommand(command, cli.from_flags(TrainConfig, flag_values=values),
                               flags={"strategy": values["strategy"].value})
    elif command == "distillery-factorize":
        values, remaining = _parse_flags(command, argv, (JobConfig, ()), (FinetuneConfig, ("train_pattern",)))
        config = cli.from_flags(JobConfig, flag_values=values)
        config.tuning = cli.from_flags(FinetuneConfig, flag_values=values, train_pattern=config.train_pattern)
        parsed = ParsedCommand(command, config)
    elif command == "distillery-quantize":
        values, remaining = _parse_flags(command, argv, (QuantizeConfig, ()))
        parsed = ParsedCommand(command, cli.from_flags(QuantizeConfig, flag_values=values))
    elif command == "distillery-benchmark":
        values, remaining = _parse_flags(command, argv, (BenchmarkConfig, ()),
                                         extra={"beam_pipeline_options": "benchmark/main.py's"})
        return ParsedCommand(command, cli.from_flags(BenchmarkConfig, flag_values=values), positional=remaining)
    else:
        raise ArgumentsError(f"{command}: not a Distillery job command")
    if remaining:
        raise ArgumentsError(f"{command}: unexpected arguments {remaining}")
    return parsed


COMMANDS = ("distillery-extract", "distillery-train", "distillery-factorize", "distillery-quantize",
            "distillery-benchmark")


def parse(resource: Mapping[str, Any], resources: Sequence[Mapping[str, Any]]) -> ParsedCommand:
    """The one Distillery job command of a manifest (a JobSet's or TFJob's replicas must agree).

    Raises:
        ArgumentsError: the manifest runs no job command, several different ones, or arguments its command refuses.
    """
    configmaps = configmap_data(resources)
    name = f"{resource['kind']}/{resource['metadata']['name']}"
    commands = {}
    for _, spec in pods.pod_specs(resource):
        for container in spec.get("containers", []):
            command = (container.get("command") or [""])[0]
            if command in COMMANDS:
                commands[(command, tuple(expanded_args(container, configmaps)))] = None
    if not commands:
        raise ArgumentsError(f"{name}: runs none of {', '.join(COMMANDS)}")
    if len(commands) > 1:
        lines = [set(command) | set(argv) for command, argv in commands]
        differing = sorted(set.union(*lines) - set.intersection(*lines))
        raise ArgumentsError(f"{name}: its pods run {len(commands)} different command lines (they must agree); "
                             f"differing: {differing}")
    ((command, argv),) = commands
    try:
        return parse_command(command, argv)
    except (ArgumentsError, ValueError) as error:
        raise ArgumentsError(f"{name}: {error}") from None
