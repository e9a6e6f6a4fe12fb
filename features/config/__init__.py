"""Shipped configuration files, and reading a configuration YAML with one-line errors."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path | None, *, package: str, default: str, what: str) -> tuple[Any, str]:
    """Parse ``path``, or the shipped ``package/default`` file when ``path`` is ``None``.

    Returns ``(data, source)`` where ``source`` names the file for error messages.
    Raises ``ValueError`` (one line) when the file cannot be read or is not YAML.
    """
    if path is None:
        text = resources.files(package).joinpath(default).read_text()
        source = f"the default {what}"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
        source = str(path)
    try:
        return yaml.safe_load(text), source
    except yaml.YAMLError as exc:
        raise ValueError(f"{source} is not valid YAML: {str(exc).splitlines()[0]}") from None
