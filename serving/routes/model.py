"""Model routes: ``GET /v1/model`` (what is served) and ``POST /v1/admin/reload``."""

from __future__ import annotations

from customer_lifecycle.serving.routes.deps import (
    UNAUTHORIZED,
    UNAVAILABLE,
    Authorized,
    CurrentModel,
    State,
)
from customer_lifecycle.serving.schemas import ModelInfo, ReloadResult, RiskThresholds, error_doc
from fastapi import APIRouter, HTTPException

MODEL = "/v1/model"
RELOAD = "/v1/admin/reload"

router = APIRouter(tags=["model"], dependencies=Authorized)


@router.get(
    MODEL,
    response_model=ModelInfo,
    responses={401: UNAUTHORIZED, 503: UNAVAILABLE},
    summary="The model being served",
)
async def model_info(model: CurrentModel) -> ModelInfo:
    bundle = model.bundle
    return ModelInfo(
        name=model.name,
        version=model.version,
        uri=model.uri,
        run_id=model.run_id,
        stages=list(bundle.stages),
        feature_count=len(model.feature_names),
        feature_names=list(model.feature_names),
        horizon_days=bundle.horizon_days,
        risk_thresholds=RiskThresholds(
            medium_from=bundle.risk_thresholds[0], high_from=bundle.risk_thresholds[1]
        ),
        reasons_method=model.reasons_method,
        loaded_at=model.loaded_at,
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
    """Resolve the model URI again and swap in the new version once it is fully loaded.
    In-flight requests finish on the model they started with."""
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
