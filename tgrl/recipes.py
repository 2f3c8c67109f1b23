"""Recipes: one flat YAML per run, read by TRL's ``TrlParser``, plus ``key=value`` overrides.

    python train/rl.py --config train/recipes/tiny/tgrl.yaml seed=1 --learning_rate 5e-5

``TrlParser`` reads the file, sets its ``env:`` variables, converts the values and lets the command line
win. What this adds: ``key=value`` overrides, no prefix matching, errors that name the file and the
closest valid key (a typo must never fall back to a library default), raised as :class:`UserError` so
scripts exit without a traceback, and the merged mapping for the run record.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from typing import Any

from trl import TrlParser

from tgrl.utils import UserError, load_yaml_mapping


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read one recipe YAML (a flat mapping); errors name the file."""
    return load_yaml_mapping(path, "recipe", fix="see train/recipes/ for the shipped recipes")


def split_config_arg(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config PATH`` (or ``--config=PATH`` / ``config=PATH``) out of ``argv``."""
    rest, config = [], None
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a path to a recipe YAML")
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config=") or arg.startswith("config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config, rest


def overrides_to_dict(argv: Sequence[str]) -> dict[str, str | list[str]]:
    """``key=value``, ``--key=value``, ``--key value`` (``--flag`` alone = true; ``--key a b`` = list)."""
    out: dict[str, str | list[str]] = {}
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
                out[key] = value
                i += 1
                continue
            values = []
            i += 1
            while i < len(argv) and not argv[i].startswith("--") and "=" not in argv[i]:
                values.append(argv[i])
                i += 1
            out[key] = values[0] if len(values) == 1 else (values or "true")
        elif "=" in arg:
            key, value = arg.split("=", 1)
            out[key] = value
            i += 1
        else:
            raise UserError(f"cannot read command-line argument {arg!r}. Fix: write overrides as key=value")
    return out


class RecipeParser(TrlParser):
    """``TrlParser`` with the errors a recipe user needs: no prefix matching (``learning_rat`` is a typo,
    not ``learning_rate``), and argparse's usage-and-exit turned into a :class:`UserError`."""

    def __init__(self, dataclass_types: Sequence[type]):
        super().__init__(dataclass_types, allow_abbrev=False, exit_on_error=False)

    def error(self, message: str):
        raise UserError(message)

    def set_defaults_with_config(self, **config: Any) -> list[str]:
        # argparse converts string defaults only: YAML numbers and booleans go through the field's type as
        # their command-line spelling would (``warmup_steps: 20`` -> 20.0, ``seed: 1.5`` -> an error).
        scalars = (bool, int, float)
        config = {k: str(v) if isinstance(v, scalars) else v for k, v in config.items()}
        return super().set_defaults_with_config(**config)

    def check_keys(self, mapping: dict[str, Any], source: str) -> None:
        """Fail on the first key that no dataclass field takes, naming ``source`` and the closest fields."""
        fields = sorted({action.dest for action in self._actions if action.option_strings})
        unknown = sorted(set(mapping) - set(fields))
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            owners = ", ".join(cls.__name__ for cls in self.dataclass_types)
            raise UserError(
                f"{source}: unknown key '{key}' (not a field of {owners}).{hint}"
                + (f" Other unknown keys: {unknown[1:]}" if len(unknown) > 1 else "")
            )

    def to_args(self, overrides: dict[str, str | list[str]]) -> list[str]:
        """Overrides as argparse tokens; a list field also takes ``a,b`` (one shell word)."""
        args = []
        for key, value in overrides.items():
            values = value if isinstance(value, list) else [value]
            if self._option_string_actions[f"--{key}"].nargs == "+":
                values = [part for item in values for part in item.split(",") if part]
            args += [f"--{key}", *values]
        return args


def parse_recipe(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Parse ``--config RECIPE`` plus overrides into one instance per dataclass type.

    ``TrlParser`` reads the recipe, sets its ``env:`` variables, converts the values and lets the command
    line win. What this adds: ``key=value`` overrides, errors that name the file and the closest valid
    key, and the merged raw mapping (recipe + overrides) it returns for the run record.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path, rest = split_config_arg(argv)
    recipe = load_recipe(config_path) if config_path else {}  # TrlParser's own read names no file
    if not isinstance(recipe.get("env") or {}, dict):
        raise UserError(f"{config_path}: 'env' must be a mapping of environment variables")
    overrides = overrides_to_dict(rest)
    parser = RecipeParser(dataclass_types)
    parser.check_keys({k: v for k, v in recipe.items() if k != "env"}, str(config_path))
    parser.check_keys(overrides, "command line")
    args = (["--config", config_path] if config_path else []) + parser.to_args(overrides)
    try:
        instances = parser.parse_args_and_config(args)
    except argparse.ArgumentError as err:  # a value argparse could not convert to the field's type
        key = (err.argument_name or "").split("/")[0].removeprefix("--")
        where = "command line" if key in overrides else str(config_path)
        value = overrides.get(key, recipe.get(key))
        raise UserError(f"{where}: '{key}' = {value!r} has the wrong type ({err.message})") from None
    except (TypeError, ValueError) as err:  # a dataclass's own validation
        raise UserError(f"{config_path or 'command line'}: {err}") from None
    recipe.pop("env", None)
    return tuple(instances), {**recipe, **overrides}
