"""One validator for every setting: flags, ``--config`` YAML files and the sections of a pipeline recipe.

``--config recipe.yaml`` sets the same fields as the flags (keys are field names); flags given on the
command line override the file. :func:`check_values` checks a mapping of settings (a YAML file, a recipe's
section) with the same code: choices, numbers and their ranges (:mod:`tisdpo.config.ranges`), booleans, and
unknown names with the closest valid one.
Every mistake is a one-line :class:`~tisdpo.errors.UserError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from tisdpo.config.ranges import check_range, check_ranges
from tisdpo.errors import UserError, did_you_mean, one_line
from tisdpo.objectives import OBJECTIVES


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping that names a key twice (plain YAML keeps the last one silently,
    so a recipe's second ``tisdpo_D:`` would quietly replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml_config(path: str) -> dict[str, Any]:
    """Read a YAML recipe with the safe loader; it must be a mapping of field names to values."""
    if not os.path.exists(path):
        raise UserError("config file not found", source=path)
    with open(path, encoding="utf-8") as handle:
        try:
            loader = _UniqueKeyLoader(handle)  # a SafeLoader: what yaml.safe_load runs, plus the duplicate check
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            raise UserError(
                f"not valid YAML ({getattr(err, 'problem', err)})",
                source=path,
                location=f"line {mark.line + 1}" if mark else None,
            ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"expected a mapping of field names to values, got {type(data).__name__}", source=path)
    return data


def field_names(types: Sequence[type]) -> set[str]:
    return {f.name for t in types for f in dataclasses.fields(t) if f.init}


def check_keys(keys: Sequence[str], types: Sequence[type], source: str | None, section: str | None = None) -> None:
    """Every key must be a field of ``types``; an unknown one is refused with the closest valid name."""
    known = field_names(types)
    for key in keys:
        if key not in known:
            raise UserError(f"unknown setting '{key}'{did_you_mean(key, known)}", source=source, field=section)


def extract_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config PATH`` (or ``--config=PATH``) out of argv."""
    rest, config = [], None
    iterator = iter(argv)
    for arg in iterator:
        if arg == "--config":
            config = next(iterator, None)
            if config is None:
                raise UserError("--config needs a path to a YAML file")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config, rest


def _choices_text(choices: Sequence[Any]) -> str:
    return ", ".join(str(c) for c in choices)


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser whose errors are one-line UserErrors (with the closest valid value) instead of
    argparse's usage text and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        head, _, detail = message.removeprefix("argument ").partition(": ")
        flag = head.split("/")[0].strip()  # "--max_steps/--max-steps" -> "--max_steps"
        action = self._option_string_actions.get(flag)
        if action is not None and action.choices and detail.startswith("invalid choice"):
            value = detail.removeprefix("invalid choice:").split("(choose from", 1)[0].strip().strip("'\"")
            choices = [str(c) for c in action.choices]
            raise UserError(
                f"{flag}: unknown value '{value}'{did_you_mean(value, choices)}; choose one of {_choices_text(choices)}"
            )
        raise UserError(one_line(f"{flag}: {detail}" if action is not None and detail else message))


def build_parser(types: Sequence[type], prog: str = "tisdpo", description: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(list(types), prog=prog, description=description)
    for action in parser._actions:
        if action.dest == "loss_type":  # objectives registered after this module was imported count too
            action.choices = list(OBJECTIVES)
    return parser


def field_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each field's own action (not the ``--no_X`` complement of a boolean that defaults to true)."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        actions.setdefault(action.dest, action)
    return actions


_EXPECTED = {int: "an integer", float: "a number", string_to_bool: "true or false"}
_ACCEPTED = {int: (int, str), float: (int, float, str), string_to_bool: (bool, str)}


def _coerce(action: argparse.Action, value: Any, source: str | None, name: str | None = None) -> Any:
    """A value checked like the same flag on the command line (choices, numbers, booleans).

    ``name`` is what an error names as the field (default: the flag's own name)."""
    name = name or action.dest
    if action.choices:
        choices = [str(c) for c in action.choices]
        if str(value) not in choices:
            raise UserError(
                f"unknown value '{value}'{did_you_mean(str(value), choices)}; choose one of {_choices_text(choices)}",
                source=source,
                field=name,
            )
        return action.type(str(value)) if action.type else value
    if value is None or action.nargs in ("+", "*") or action.type in (None, str):
        return value
    expected = _EXPECTED.get(action.type, "another value")
    accepted = _ACCEPTED.get(action.type, (str,))
    if (isinstance(value, bool) and bool not in accepted) or not isinstance(value, accepted):
        if action.type in _ACCEPTED:
            raise UserError(f"expected {expected}, got {value!r}", source=source, field=name)
        return value
    if isinstance(value, str):
        try:
            return action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise UserError(f"expected {expected}, got {value!r}", source=source, field=name) from None
    return value


def _check_values(
    values: Mapping[str, Any],
    parser: argparse.ArgumentParser,
    types: Sequence[type],
    source: str | None,
    section: str | None,
) -> dict[str, Any]:
    check_keys(list(values), types, source, section)
    actions = field_actions(parser)
    checked = {}
    for key, value in values.items():
        name = f"{section}.{key}" if section else key
        checked[key] = _coerce(actions[key], value, source, name) if key in actions else value
        check_range(key, checked[key], name, source)
    return checked


def check_values(
    values: Mapping[str, Any], types: Sequence[type], source: str | None = None, section: str | None = None
) -> dict[str, Any]:
    """``values`` (field name -> value) checked exactly as a ``--config`` YAML file of flags is: unknown
    names (with the closest valid one), choices, numbers and booleans. Returns the values coerced to the
    flags' types. Errors name ``source`` (the file) and the field: ``section.key`` when a section of the
    file is checked (an unknown name: the section)."""
    if not isinstance(values, Mapping):
        raise UserError(
            f"expected a mapping of flag names to values, got {type(values).__name__}", source=source, field=section
        )
    return _check_values(values, build_parser(types), types, source, section)


def _make_positional(parser: argparse.ArgumentParser, dest: str) -> None:
    """Turn the option of field ``dest`` (a list field) into positional arguments."""
    action = field_actions(parser)[dest]
    for option in action.option_strings:
        parser._option_string_actions.pop(option, None)
    action.option_strings = []
    action.required = True
    for group in parser._action_groups:
        if action in group._group_actions:
            group._group_actions.remove(action)
    parser._positionals._group_actions.append(action)


def parse_config(
    types: Sequence[type],
    argv: list[str],
    prog: str = "tisdpo",
    *,
    config_flag: bool = True,
    positional: str | None = None,
    description: str | None = None,
) -> tuple[Any, ...]:
    """Parse flags (and an optional ``--config`` YAML) into instances of ``types``.

    YAML values are checked like flags (:func:`check_values`); every mistake is a one-line UserError
    naming the file, the field and, for an unknown name or value, the closest valid one.
    ``config_flag=False``: ``--config`` is no special flag (a command whose own field it is).
    ``positional``: the list field that takes the arguments given without a flag.
    """
    config_path = None
    argv = list(argv)
    if config_flag:
        config_path, argv = extract_config_flag(argv)
    parser = build_parser(types, prog, description)
    if positional:
        _make_positional(parser, positional)
    if config_path:
        values = load_yaml_config(config_path)
        parser.set_defaults(**_check_values(values, parser, types, config_path, None))
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except (ValueError, TypeError) as err:
        raise UserError(one_line(str(err)), source=config_path) from None
    if remaining:
        flag = remaining[0]
        name = flag.lstrip("-").split("=", 1)[0]
        raise UserError(f"unknown flag '{flag}'{did_you_mean(name, field_names(types))}")
    for settings in parsed:
        check_ranges(settings)
    return tuple(parsed)
