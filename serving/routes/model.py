"""Model routes: ``GET /v1/model`` (what is served) and ``POST /v1/admin/reload``."""

from __future__ import annotations

from datetime import datetime

from customer_lifecycle.features.btyd import ValueModel
from customer_lifecycle.scoring.check import Reason
from customer_lifecycle.serving.registry import ModelHolder
from customer_lifecycle.serving.routes.deps import (
    UNAUTHORIZED,
    UNAVAILABLE,
    Authorized,
    CurrentModel,
    State,
)
from customer_lifecycle.serving.schemas import (
    ModelInfo,
    ReloadResult,
    RiskThresholds,
    ValueInfo,
    error_doc,
)
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

MODEL = "/v1/model"
RELOAD = "/v1/admin/reload"

router = APIRouter(tags=["model"], dependencies=Authorized)


class RefusedModel(BaseModel):
    """A model version the server refused to serve, and why."""

    uri: str = Field(description="The model URI configured.")
    version: str | None = Field(
        description="The version refused; null when the URI named no version."
    )
    reason: Reason = Field(
        description="invalid: the files were refused; crashed or timeout: checking them "
        "killed the check or outran it; unavailable: they could not be fetched; "
        "unresolvable: the URI named no model; error: anything else."
    )
    error: str = Field(description="Why, in one line.")
    refused_at: datetime


class ServedModelInfo(ModelInfo):
    """:class:`ModelInfo`, and the last version this server refused, if any."""

    last_refused: RefusedModel | None = Field(
        default=None,
        description="The last model version refused (the served model stayed in place); "
        "null if none was.",
    )


def _last_refused(holder: ModelHolder) -> RefusedModel | None:
    refused = holder.refused
    if refused is None:
        return None
    return RefusedModel(
        uri=refused.uri,
        version=refused.version,
        reason=refused.reason,
        error=refused.error,
        refused_at=refused.refused_at,
    )


def _value_info(value: ValueModel | None) -> ValueInfo | None:
    if value is None:
        return None
    tiers = value.tiers
    # validated, not constructed: the model's names are checked against the documented ones
    return ValueInfo.model_validate(
        {
            "horizon_days": value.horizon_days,
            "tiers": list(tiers.labels),
            "tier_shares": list(tiers.shares),
            "tier_thresholds": list(tiers.thresholds),
            "tier_by": value.tier_by,
            "predicts_spend": value.has_spend,
            "heads": list(value.heads),
        }
    )


@router.get(
    MODEL,
    response_model=ServedModelInfo,
    responses={401: UNAUTHORIZED, 503: UNAVAILABLE},
    summary="The model being served",
)
async def model_info(model: CurrentModel, state: State) -> ServedModelInfo:
    bundle = model.bundle
    return ServedModelInfo(
        name=model.name,
        version=model.version,
        uri=model.uri,
        run_id=model.run_id,
        stages=list(bundle.stages),
        feature_count=len(model.feature_names),
        feature_names=list(model.feature_names),
        horizon_days=bundle.horizon_days,
        forecasts_stages=bundle.forecasts,
        risk_thresholds=RiskThresholds(
            medium_from=bundle.risk_thresholds[0], high_from=bundle.risk_thresholds[1]
        ),
        reasons_method=model.reasons_method,
        value=_value_info(bundle.value),
        loaded_at=model.loaded_at,
        last_refused=_last_refused(state.holder),
    )


@router.post(
    RELOAD,
    response_model=ReloadResult,
    responses={
        401: UNAUTHORIZED,
        502: error_doc("The model could not be resolved or loaded; the old one stays."),
        503: UNAVAILABLE,
    },
    summary="Load the model the URI points at now (for example a new champion)",
)
async def reload_model(state: State) -> ReloadResult:
    """Resolve the model URI again and swap in the new version once it is checked and
    fully loaded; a version refused before is tried again. In-flight requests finish on
    the model they started with; a refused version leaves the served one in place."""
    if state.holder.uri is None:
        raise HTTPException(
            503,
            "no model URI is configured (LIFECYCLE_MODEL_URI)",
            headers={"Retry-After": str(state.settings.retry_after_seconds)},
        )
    try:
        outcome = await state.holder.reload()
    except Exception as exc:
        raise HTTPException(502, f"cannot load model {state.holder.uri}: {exc}") from None
    return ReloadResult(
        changed=outcome.changed,
        previous_version=outcome.previous_version,
        version=outcome.version,
    )
