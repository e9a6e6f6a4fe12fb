"""Lifecycle stage taxonomy as configuration (docs/stages.md)."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from customer_lifecycle.features.config_file import ConfigModel, load_config
from customer_lifecycle.features.messages import did_you_mean
from pydantic import Field

#: Fewest and most stages a taxonomy may have (a model stores the same bounds).
MIN_STAGES, MAX_STAGES = 2, 12
#: Longest stage name or synonym, in characters.
MAX_NAME_LENGTH = 64
#: Taxonomies shipped in ``features/config``, selectable by name (``--taxonomy hubspot``).
SHIPPED_TAXONOMIES: dict[str, str] = {
    "default": "stages.yaml",
    "hubspot": "hubspot-stages.yaml",
}


@dataclass(frozen=True)
class Taxonomy:
    """Ordered stage names and the synonyms that map onto them.

    Parameters
    ----------
    stages
        Stage names in funnel order: 2 to 12 of them, unique regardless of case. A
        name is any text without control characters or backticks, with no space at
        either end, up to 64 characters: it becomes the ``p_<stage>`` column name.
    synonyms
        Lower-case synonym -> stage name. A synonym may not be another stage's name.
    """

    stages: tuple[str, ...]
    synonyms: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not MIN_STAGES <= len(self.stages) <= MAX_STAGES:
            raise ValueError(
                f"a taxonomy needs {MIN_STAGES} to {MAX_STAGES} stages, got {len(self.stages)}"
            )
        for name in self.stages:
            _check_name(name, "stage name")
        lower = [s.lower() for s in self.stages]
        if len(set(lower)) != len(lower):
            raise ValueError(f"stage names repeat in the taxonomy: {list(self.stages)}")
        for synonym, stage in self.synonyms.items():
            _check_name(synonym, "synonym")
            if synonym != synonym.lower():
                raise ValueError(f"synonym {synonym!r} must be lower case")
            if stage not in self.stages:
                raise ValueError(f"synonym {synonym!r} maps to {stage!r}, which is not a stage")
            if synonym in lower and self.stages[lower.index(synonym)] != stage:
                raise ValueError(f"synonym {synonym!r} of {stage!r} is the name of another stage")

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

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a stage or a synonym of one (case-insensitive)."""
        key = str(name).strip().lower()
        return key in self.synonyms or any(s.lower() == key for s in self.stages)

    def index(self, stage: str) -> int:
        """Position of ``stage`` (or a synonym) in funnel order."""
        return self.stages.index(self.normalise(stage))

    def to_dict(self) -> dict[str, Any]:
        """``{"stages": [...], "synonyms": {synonym: stage}}``: JSON a model can store."""
        return {"stages": list(self.stages), "synonyms": dict(sorted(self.synonyms.items()))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str) -> Taxonomy:
        """The taxonomy :meth:`to_dict` wrote, checked; a bad one is one line naming ``source``."""
        try:
            stages = data["stages"]
            synonyms = data.get("synonyms", {})
            if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
                raise ValueError("stages must be a list of names")
            if not isinstance(synonyms, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in synonyms.items()
            ):
                raise ValueError("synonyms must map names to stage names")
            return cls(stages=tuple(stages), synonyms=dict(synonyms))
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"{source}: the taxonomy needs a list of stages") from None
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a {what} must be non-empty text")
    if name != name.strip():
        raise ValueError(f"{what} {name!r} starts or ends with a space")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} {name[:20]!r}... is longer than {MAX_NAME_LENGTH} characters")
    # Stage names become column names (p_<stage>, quoted with backticks in Spark SQL),
    # JSON keys and metric names: printable text only.
    if "`" in name or any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ValueError(f"{what} {name!r} holds a control character or a backtick")


class StageEntry(ConfigModel):
    """One stage of a taxonomy file, and the other names a label file may use for it."""

    name: str
    synonyms: list[str] = Field(default_factory=list)


class TaxonomyFile(ConfigModel):
    """The taxonomy's YAML layout: ``stages: [{name: ..., synonyms: [...]}, ...]``."""

    stages: Annotated[list[StageEntry], Field(min_length=1)]


def load_taxonomy(spec: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy: ``None`` the shipped default, a shipped name, or a YAML file.

    Parameters
    ----------
    spec
        ``None`` or ``"default"`` for the five default stages; ``"hubspot"`` for
        HubSpot's default lifecycle stages (names are matched before paths, as mapping
        presets are); otherwise a YAML file holding
        ``stages: [{name: ..., synonyms: [...]}, ...]`` in funnel order.

    Raises
    ------
    ValueError
        One line naming the file, the place in it and the problem.
    """
    config = resources.files("customer_lifecycle.features.config")
    if spec is None or (isinstance(spec, str) and spec.lower() in SHIPPED_TAXONOMIES):
        name = "default" if spec is None else str(spec).lower()
        what = "taxonomy" if name == "default" else f"taxonomy {name!r}"
        shipped = config / SHIPPED_TAXONOMIES[name]
        spec_file, source = load_config(TaxonomyFile, None, what=what, default=shipped)
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(
                f"taxonomy {path} does not exist (shipped taxonomies: "
                f"{', '.join(SHIPPED_TAXONOMIES)})"
            )
        spec_file, source = load_config(TaxonomyFile, path, what="taxonomy")
    synonyms: dict[str, str] = {}
    try:
        for entry in spec_file.stages:
            for syn in entry.synonyms:
                key = syn.strip().lower()
                if synonyms.get(key, entry.name) != entry.name:
                    raise ValueError(
                        f"synonym {syn!r} is given to both {synonyms[key]!r} and {entry.name!r}"
                    )
                synonyms[key] = entry.name
        return Taxonomy(stages=tuple(entry.name for entry in spec_file.stages), synonyms=synonyms)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
