"""Configuration files: YAML read, checked against a pydantic model, refused in one line.

Every configuration of the product (feature definition, stage taxonomy, event mapping,
rulebook, playbook) is a :class:`ConfigModel` loaded with :func:`load_config`: a file,
or a default shipped inside the package. A file that does not fit its model is refused
with one line naming the file, the place in it and the problem, for example::

    playbook ops.yaml: stages.retention.any has unknown key 'descripton'; did you mean
    'description'? (valid keys: action, description)

Messages read as ``<file>: <place> <predicate>``. Checks written for a model raise
``ValueError`` with the predicate alone ("is mapped to 'x', which is not ..."); the
place is added here. pydantic's own errors (wrong type, missing key) are reworded the
same way, with the place quoted.
"""

from __future__ import annotations

import re
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from customer_lifecycle.features.messages import did_you_mean, one_line
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import ErrorDetails

M = TypeVar("M", bound=BaseModel)

_MAPPING_TYPES = {"dict_type", "model_type", "model_attributes_type", "mapping_type"}
_LIST_TYPES = {"list_type", "tuple_type", "set_type", "frozen_set_type", "iterable_type"}
_INT_TYPES = {"int_type", "int_parsing", "int_from_float", "int_parsing_size"}
_FLOAT_TYPES = {"float_type", "float_parsing", "finite_number"}
_BOOL_TYPES = {"bool_type", "bool_parsing"}
_OWN_CHECKS = {"value_error", "assertion_error"}


class ConfigModel(BaseModel):
    """Base of the configuration models: immutable, and an unknown key is a mistake.

    An unknown key is refused before the fields are checked, with the closest valid key
    as a suggestion: a misspelt required key would otherwise be reported as missing. A
    key written with no value takes its default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = {field.alias or name: field for name, field in cls.model_fields.items()}
        for key in data:
            if key not in fields:
                raise ValueError(
                    f"has unknown key {key!r}{did_you_mean(key, fields)}"
                    f" (valid keys: {', '.join(fields)})"
                )
        # A key written with no value ("stages:") takes its default, as if left out.
        return {k: v for k, v in data.items() if v is not None or fields[k].is_required()}


def config_keys(model: type[BaseModel]) -> list[str]:
    """The keys a file may use for ``model``, in declaration order."""
    return [field.alias or name for name, field in model.model_fields.items()]


def load_config(
    model: type[M],
    path: str | Path | None,
    *,
    what: str,
    default: Traversable | None = None,
    context: dict[str, Any] | None = None,
) -> tuple[M, str]:
    """Read a YAML file, or the packaged default, and validate it as ``model``.

    Parameters
    ----------
    model
        The pydantic model the file must fit.
    path
        The file; ``None`` reads ``default``.
    what
        What the file is ("playbook", "mapping file"), for messages.
    default
        The configuration shipped in the package, such as
        ``importlib.resources.files("customer_lifecycle.serving.config") / "playbook.yaml"``.
    context
        Passed to the model's validators (what a file is checked against, such as
        the feature names a rulebook may use).

    Returns
    -------
    config : model
        The validated configuration.
    source : str
        How messages name the file (``"playbook ops.yaml"``, ``"the shipped playbook"``),
        for checks made after loading.

    Raises
    ------
    ValueError
        One line naming the file and the problem: missing or unreadable file, YAML
        syntax error (with its line), not a mapping, or the first field that does not
        fit ``model`` (with its place in the file).
    """
    if path is None:
        if default is None:
            raise TypeError(f"no {what} given and none shipped")
        text = default.read_text(encoding="utf-8")
        source = f"the shipped {what}"
    else:
        source = f"{what} {path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"{source} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {source}: {one_line(exc)}") from None
    return parse_config(model, parse_yaml(text, source), source=source, context=context), source


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error is one line naming ``source`` and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise ValueError(f"{source} is not valid YAML{where}: {problem}") from None


def parse_config(
    model: type[M], data: Any, *, source: str, context: dict[str, Any] | None = None
) -> M:
    """Validate parsed data as ``model``; any failure is one ``ValueError`` line."""
    if not isinstance(data, dict):
        keys = ", ".join(config_keys(model))
        raise ValueError(f"{source} must be a YAML mapping with the keys {keys}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ValueError(describe_error(exc, source)) from None


def describe_error(exc: ValidationError, source: str) -> str:
    """One line for the first error of ``exc``: ``<source>: <place> <predicate>``."""
    error = exc.errors(include_url=False)[0]
    loc = list(error["loc"])
    key = None
    if len(loc) >= 2 and loc[-1] == "[key]":
        # A dictionary key failed its check: the place is the dictionary.
        key = loc[-2]
        loc = loc[:-2]
    if error["type"] in _OWN_CHECKS:
        subject = _place(loc) + (" key" if key is not None and loc else "")
        predicate = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
    elif error["type"] == "missing":
        field = str(loc.pop())
        article = "an" if field[:1] in "aeiou" else "a"
        subject = _quoted(loc)
        predicate = f"needs {article} {field!r}"
    else:
        subject = _quoted(loc) + (f" key {key!r}" if key is not None else "")
        predicate = _reworded(error)
    return f"{source}: {subject} {predicate}" if subject else f"{source} {predicate}"


def _place(loc: list[Any]) -> str:
    """``stages.retention.any``, ``rules[0].when[1]``: where in the file."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _quoted(loc: list[Any]) -> str:
    return f"'{_place(loc)}'" if loc else ""


def _reworded(error: ErrorDetails) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind in _MAPPING_TYPES:
        return f"must be a mapping, got {_shown(value)}"
    if kind in _LIST_TYPES:
        return f"must be a list, got {_shown(value)}"
    if kind == "string_type":
        return f"must be text, got {_shown(value)}"
    if kind in _INT_TYPES:
        return f"must be a whole number, got {_shown(value)}"
    if kind in _FLOAT_TYPES:
        return f"must be a number, got {_shown(value)}"
    if kind in _BOOL_TYPES:
        return f"must be true or false, got {_shown(value)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"is {_shown(value)}, not one of {', '.join(choices)}{did_you_mean(value, choices)}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"needs at least {n} entries"
    if kind == "extra_forbidden":
        return "is not a known key"
    message = re.sub(r"^Input should", "must", error["msg"])
    return f"{message}, got {_shown(value)}"


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
