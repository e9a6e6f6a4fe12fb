"""Lifecycle stage taxonomy as configuration (docs/stages.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated

from customer_lifecycle.features.config_file import ConfigModel, load_config
from customer_lifecycle.features.messages import did_you_mean
from pydantic import Field


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
        hint = did_you_mean(key, [s.lower() for s in self.stages] + list(self.synonyms))
        raise ValueError(
            f"unknown stage {name!r}; known stages are {', '.join(self.stages)}"
            + (f" (synonyms: {', '.join(sorted(self.synonyms))})" if self.synonyms else "")
            + hint
        )

    def index(self, stage: str) -> int:
        """Position of ``stage`` (or a synonym) in funnel order."""
        return self.stages.index(self.normalise(stage))


class StageEntry(ConfigModel):
    """One stage of a taxonomy file, and the other names a label file may use for it."""

    name: str
    synonyms: list[str] = Field(default_factory=list)


class TaxonomyFile(ConfigModel):
    """The taxonomy's YAML layout: ``stages: [{name: ..., synonyms: [...]}, ...]``."""

    stages: Annotated[list[StageEntry], Field(min_length=1)]


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy YAML file; ``None`` loads the shipped default.

    The file holds ``stages: [{name: ..., synonyms: [...]}, ...]`` in funnel order.

    Raises
    ------
    ValueError
        One line naming the file, the place in it and the problem.
    """
    shipped = resources.files("customer_lifecycle.features.config") / "stages.yaml"
    spec, source = load_config(TaxonomyFile, path, what="taxonomy", default=shipped)
    synonyms = {syn.lower(): entry.name for entry in spec.stages for syn in entry.synonyms}
    try:
        return Taxonomy(stages=tuple(entry.name for entry in spec.stages), synonyms=synonyms)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
