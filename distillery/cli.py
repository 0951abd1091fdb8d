"""Command-line plumbing of every console script: absl flags from a config dataclass, and a `--help` that lists them.

One definition per setting: a field of a job's config dataclass carries its default and its help text
(`option(...)`); `define_flags` turns those fields into absl flags and `from_flags` builds the dataclass
back from the parsed values, so no default is written twice. `run(main)` is `absl.app.run` with one
addition: a console script's main module is setuptools' wrapper, whose own flags absl would list under
`--help` (none), so the command module's flags are registered for the wrapper too.

    .venv/bin/distillery-train --help       # the command's own flags; --helpfull lists every flag
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

_HELP, _FLAG, _CHOICES, _LOWER_BOUND = "cli.help", "cli.flag", "cli.choices", "cli.lower_bound"
_PARSE, _SPELL = "cli.parse", "cli.spell"


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,  # noqa: A002 (absl's word)
           choices: Sequence[str] | None = None, lower_bound: float | None = None,
           parse: Callable[[str], Any] | None = None, spell: Callable[[Any], str] | None = None) -> Any:
    """A dataclass field that is also a command-line flag (`flag` defaults to the field's name).

    A field without a default is a required flag; `choices` makes an enum flag; a `tuple[str, ...]` field
    is a flag that may be repeated; with `parse`, the flag is a string and the field holds `parse(string)`
    (None stays None), and `spell` is its inverse for `to_flags`, so a structured value has one textual
    form on the command line.
    """
    metadata = {_HELP: help, _FLAG: flag, _CHOICES: tuple(choices) if choices is not None else None,
                _LOWER_BOUND: lower_bound, _PARSE: parse,
                _SPELL: spell}
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field: dataclasses.Field) -> str:
    """The flag of a config field made with `option`."""
    return field.metadata.get(_FLAG) or field.name


def flag_fields(config_class: type) -> list[dataclasses.Field]:
    """The fields of `config_class` that are flags (made with `option`), in declaration order."""
    return [field for field in dataclasses.fields(config_class) if _HELP in field.metadata]


def flag_of(config_class: type, field_name: str) -> str:
    """`--flag` of one field, for error messages that name the flag."""
    (field,) = [field for field in dataclasses.fields(config_class) if field.name == field_name]
    return f"--{flag_name(field)}"


def _base_type(annotation: Any) -> Any:
    """`X` for `X` and `X | None`; raises TypeError for other unions."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if len(members) != 1:
            raise TypeError(f"a flag field must be one type or that type | None, got {annotation}")
        return members[0]
    return annotation


def _caller_module(depth: int) -> str:
    """The name absl files a flag under for the module `depth` frames up (`__main__` is sys.argv[0])."""
    name = sys._getframe(depth + 1).f_globals.get("__name__", "__main__")  # noqa: SLF001 (what absl does too)
    return sys.argv[0] if name == "__main__" else name


def define_flags(config_class: type, *, skip: Sequence[str] = (), flag_values: flags.FlagValues = flags.FLAGS,
                 module_name: str | None = None) -> None:
    """Defines one absl flag per `option` field of `config_class` (except the fields named in `skip`).

    The flags belong to the calling module (`module_name` overrides), so that its `--help` lists them.
    """
    module_name = module_name or _caller_module(1)
    hints = typing.get_type_hints(config_class)
    for field in flag_fields(config_class):
        if field.name in skip:
            continue
        kind = _base_type(hints[field.name])
        required = field.default is dataclasses.MISSING
        default = None if required else field.default
        common = dict(flag_values=flag_values, module_name=module_name, required=required)
        name, text, choices = flag_name(field), field.metadata[_HELP], field.metadata[_CHOICES]
        if field.metadata[_PARSE] is not None:
            if default is not None:
                raise TypeError(f"{config_class.__name__}.{field.name}: a parsed flag's default must be None")
            flags.DEFINE_string(name, None, text, **common)
        elif choices is not None:
            flags.DEFINE_enum(name, default, list(choices), text, **common)
        elif kind is bool:
            flags.DEFINE_boolean(name, default, text, **common)
        elif kind is int:
            flags.DEFINE_integer(name, default, text, lower_bound=field.metadata[_LOWER_BOUND], **common)
        elif kind is float:
            flags.DEFINE_float(name, default, text, lower_bound=field.metadata[_LOWER_BOUND], **common)
        elif kind is str:
            flags.DEFINE_string(name, default, text, **common)
        elif typing.get_origin(kind) is tuple and typing.get_args(kind)[:1] == (str,):
            flags.DEFINE_multi_string(name, list(default) if default else None, text, **common)
        else:
            raise TypeError(f"{config_class.__name__}.{field.name}: no flag type for {kind}")


def from_flags(config_class: type, *, flag_values: flags.FlagValues = flags.FLAGS, skip: Sequence[str] = (),
               **values: Any) -> Any:
    """`config_class` built from the parsed flags of its `option` fields; `values` set the other fields
    (and override flags). Errors of a field's `parse` propagate, for the command to report."""
    hints = typing.get_type_hints(config_class)
    for field in flag_fields(config_class):
        if field.name in values or field.name in skip:
            continue
        value = flag_values[flag_name(field)].value
        if field.metadata[_PARSE] is not None:
            value = None if value is None else field.metadata[_PARSE](value)
        elif typing.get_origin(_base_type(hints[field.name])) is tuple:
            value = tuple(value or ())
        values[field.name] = value
    return config_class(**values)


def to_flags(config: Any, first: Sequence[str] = (), skip: Sequence[str] = ()) -> list[str]:
    """`--flag=value` for every `option` field of `config` whose value is not the field's default: the
    command line that `from_flags` turns back into `config` (fields that are not flags are left out).

    The fields named in `first` come first, in that order, and are written even at their default (not when
    None): a command line meant to be read, such as the demo's log, shows those settings. Fields in `skip` are
    left out (a value another flag already gives).
    """
    fields = {field.name: field for field in flag_fields(type(config))}
    unknown = sorted(set(first) - set(fields))
    if unknown:
        raise ValueError(f"{type(config).__name__}: no flag fields {unknown}")
    argv = []
    ordered = [fields[name] for name in first] + [field for name, field in fields.items() if name not in first]
    for field in ordered:
        if field.name in skip:
            continue
        value = getattr(config, field.name)
        shown = field.name in first and value is not None
        if not shown and field.default is not dataclasses.MISSING and value == field.default:
            continue
        name = flag_name(field)
        if field.metadata[_PARSE] is not None:
            if field.metadata[_SPELL] is None:
                raise ValueError(f"--{name}: a parsed field needs `spell` to be written as a flag")
            argv.append(f"--{name}={field.metadata[_SPELL](value)}")
        elif isinstance(value, bool):
            argv.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, tuple):
            argv += [f"--{name}={item}" for item in value]
        else:
            argv.append(f"--{name}={value}")
    return argv


def run(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)`, with `--help` listing the flags of `main`'s module also from a console script."""
    module_name = main.__module__
    if module_name != "__main__":
        for flag in flags.FLAGS.get_key_flags_for_module(module_name):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)
