"""The next-best-action playbook: a YAML file mapping (stage, risk band) to an action.

The file is read and checked once, and resolved against the model's stages into a
dictionary, so choosing an action per scored customer is one lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from customer_lifecycle.scoring.bundle import RISK_BANDS

ANY = "any"
_TOP_KEYS = ("default", "stages")


@dataclass(frozen=True)
class Action:
    """One playbook entry."""

    action: str
    description: str


@dataclass(frozen=True)
class Playbook:
    """Actions per stage and band (``any`` stands for every band)."""

    default: dict[str, Action]
    stages: dict[str, dict[str, Action]]
    source: str

    def resolve(self, stages: tuple[str, ...] | list[str]) -> dict[tuple[str, str], Action]:
        """Action for every ``(stage, band)`` of a model with these stages.

        Raises
        ------
        ValueError
            When the playbook names a stage the model does not have (a typo would
            otherwise go unnoticed), or a stage and band have no action and no default.
        """
        unknown = [s for s in self.stages if s not in stages]
        if unknown:
            raise ValueError(
                f"{self.source}: stage {unknown[0]!r} is not a stage of the model "
                f"(stages: {', '.join(stages)})"
            )
        table: dict[tuple[str, str], Action] = {}
        for stage in stages:
            entry = self.stages.get(stage, {})
            for band in RISK_BANDS:
                action = (
                    entry.get(band)
                    or entry.get(ANY)
                    or self.default.get(band)
                    or self.default.get(ANY)
                )
                if action is None:
                    raise ValueError(
                        f"{self.source}: no action for stage {stage!r} and risk {band!r}, "
                        "and no default"
                    )
                table[stage, band] = action
        return table


def load_playbook(path: str | Path | None = None) -> Playbook:
    """Read and check a playbook YAML file; ``None`` reads the shipped one.

    Raises
    ------
    ValueError
        With one line naming the file and the problem.
    """
    if path is None:
        text = (
            resources.files("customer_lifecycle.serving.config")
            .joinpath("playbook.yaml")
            .read_text()
        )
        source = "shipped playbook"
    else:
        source = f"playbook {path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {source}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source} must be a mapping with the keys {', '.join(_TOP_KEYS)}")
    for key in data:
        if key not in _TOP_KEYS:
            raise ValueError(f"{source}: unknown key {key!r} (keys: {', '.join(_TOP_KEYS)})")
    default = _bands(data.get("default") or {}, f"{source}: default")
    stages_doc = data.get("stages") or {}
    if not isinstance(stages_doc, dict):
        raise ValueError(f"{source}: 'stages' must map stage names to bands")
    stages = {str(s): _bands(v, f"{source}: stages.{s}") for s, v in stages_doc.items()}
    return Playbook(default=default, stages=stages, source=source)


def _bands(doc: Any, where: str) -> dict[str, Action]:
    if not isinstance(doc, dict):
        raise ValueError(f"{where} must map risk bands (any, {', '.join(RISK_BANDS)}) to actions")
    out: dict[str, Action] = {}
    for band, entry in doc.items():
        if band != ANY and band not in RISK_BANDS:
            raise ValueError(f"{where}: {band!r} is not a risk band (any, {', '.join(RISK_BANDS)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("action"), str):
            raise ValueError(f"{where}.{band} needs an 'action' name and a 'description'")
        extra = set(entry) - {"action", "description"}
        if extra:
            raise ValueError(f"{where}.{band}: unknown key {sorted(extra)[0]!r}")
        out[str(band)] = Action(str(entry["action"]), str(entry.get("description", "")))
    return out
