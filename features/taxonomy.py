"""Lifecycle stage taxonomy as configuration (docs/stages.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from customer_lifecycle.features.config import read_yaml


@dataclass(frozen=True)
class Taxonomy:
    """Ordered stage names and the synonyms that map onto them.

    Parameters
    ----------
    stages
        Stage names in funnel order.
    synonyms
        Lower-case synonym -> stage name.
    """

    stages: tuple[str, ...]
    synonyms: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a taxonomy needs at least one stage")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stage names repeat in the taxonomy: {list(self.stages)}")

    def normalise(self, name: str) -> str:
        """Return the canonical stage for ``name`` or a synonym of it (case-insensitive).

        Raises ``ValueError`` naming the unknown stage and the known ones.
        """
        key = str(name).strip().lower()
        for stage in self.stages:
            if stage.lower() == key:
                return stage
        if key in self.synonyms:
            return self.synonyms[key]
        raise ValueError(
            f"unknown stage {name!r}; known stages are {', '.join(self.stages)}"
            + (f" (synonyms: {', '.join(sorted(self.synonyms))})" if self.synonyms else "")
        )

    def index(self, stage: str) -> int:
        """Position of ``stage`` (or a synonym) in funnel order."""
        return self.stages.index(self.normalise(stage))


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy YAML file; ``None`` loads the shipped default.

    The file holds ``stages: [{name: ..., synonyms: [...]}, ...]`` in funnel order.
    """
    data, source = read_yaml(
        path, package="customer_lifecycle.features.config", default="stages.yaml", what="taxonomy"
    )
    data = data or {}
    entries = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source} must hold a non-empty 'stages' list")
    names: list[str] = []
    synonyms: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"{source}: stages[{i}] needs a 'name'")
        unknown = set(entry) - {"name", "synonyms"}
        if unknown:
            raise ValueError(f"{source}: stages[{i}] has unknown key {sorted(unknown)[0]!r}")
        name = str(entry["name"])
        names.append(name)
        for syn in entry.get("synonyms") or []:
            synonyms[str(syn).lower()] = name
    return Taxonomy(stages=tuple(names), synonyms=synonyms)
