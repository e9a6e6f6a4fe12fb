"""The next-best-action playbook: a YAML file mapping (stage, risk band) to an action.

The file is read and checked once, and resolved against the model's stages into a
dictionary, so choosing an action per scored customer is one lookup. A model may have
any stages (docs/stages.md): the stages the playbook does not name take its
``default`` action. A playbook naming a stage the model lacks is refused (a typo would
otherwise go unnoticed) unless it says ``unknown_stages: ignore``, as the shipped one,
written for the default taxonomy, does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from customer_lifecycle.features.config_file import ConfigModel, load_config
from customer_lifecycle.scoring.bundle import RISK_BANDS
from pydantic import AfterValidator, Field

ANY = "any"
log = logging.getLogger(__name__)


class Action(ConfigModel):
    """One playbook entry: a stable id a CRM can route on, and a description for people."""

    action: str
    description: str = ""


def _band(name: str) -> str:
    if name != ANY and name not in RISK_BANDS:
        raise ValueError(f"{name!r} is not a risk band ({ANY}, {', '.join(RISK_BANDS)})")
    return name


#: Risk band (or ``any``, every band) -> action.
Bands = dict[Annotated[str, AfterValidator(_band)], Action]


class PlaybookFile(ConfigModel):
    """The playbook's YAML layout (``serving/config/playbook.yaml``)."""

    default: Bands = Field(default_factory=dict)
    stages: dict[str, Bands] = Field(default_factory=dict)
    #: What a stage under ``stages`` that the model lacks means: ``refuse`` (a typo; the
    #: model is not served) or ``ignore`` (a playbook shared by models of several
    #: taxonomies: its entry is unused).
    unknown_stages: Literal["refuse", "ignore"] = "refuse"


@dataclass(frozen=True)
class Playbook:
    """Actions per stage and band (``any`` stands for every band)."""

    default: dict[str, Action]
    stages: dict[str, dict[str, Action]]
    source: str
    unknown_stages: str = "refuse"

    def resolve(self, stages: tuple[str, ...] | list[str]) -> dict[tuple[str, str], Action]:
        """Action for every ``(stage, band)`` of a model with these stages.

        A stage the playbook does not name takes the ``default`` entry, band by band.

        Raises
        ------
        ValueError
            When the playbook names a stage the model does not have and does not say
            ``unknown_stages: ignore`` (a typo would otherwise go unnoticed), or a stage
            and band have no action and no default.
        """
        unknown = [s for s in self.stages if s not in stages]
        if unknown and self.unknown_stages != "ignore":
            raise ValueError(
                f"{self.source}: stage {unknown[0]!r} is not a stage of the model "
                f"(stages: {', '.join(stages)}); set unknown_stages: ignore to allow it"
            )
        if unknown:
            unnamed = [s for s in stages if s not in self.stages]
            log.warning(
                "%s: entries for %s are unused (not stages of the model); %s take the default",
                self.source,
                ", ".join(unknown),
                ", ".join(unnamed) or "no stage",
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
        With one line naming the file, the place in it and the problem.
    """
    shipped = resources.files("customer_lifecycle.serving.config") / "playbook.yaml"
    spec, source = load_config(PlaybookFile, path, what="playbook", default=shipped)
    return Playbook(
        default=dict(spec.default),
        stages=dict(spec.stages),
        source=source,
        unknown_stages=spec.unknown_stages,
    )
