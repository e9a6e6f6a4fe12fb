"""Server settings: one typed class read from ``LIFECYCLE_*`` environment variables.

Nothing is read at import time. :func:`get_settings` builds the settings once and
caches them; tests pass their own :class:`Settings` to :func:`serving.app.create_app`
(or clear the cache with ``get_settings.cache_clear()``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the HTTP server can be told, with its environment variable.

    Each field ``x`` is read from ``LIFECYCLE_X`` (for example ``LIFECYCLE_MODEL_URI``).
    """

    model_config = SettingsConfigDict(env_prefix="LIFECYCLE_", extra="ignore", frozen=True)

    model_uri: str | None = Field(
        default=None,
        description="Model to serve: models:/NAME@champion, models:/NAME/3 or a bundle "
        "directory. Without one the server runs but answers 503 to scoring requests.",
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), description="Accepted API keys, comma separated."
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File with one accepted API key per line (blank lines and # comments "
        "are skipped); adds to api_keys.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Serve without API keys. Refused unless set explicitly, so a missing "
        "key file never opens the API by accident.",
    )
    max_customers_per_request: int = Field(default=1000, ge=1)
    max_events_per_customer: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_body_bytes_in_flight: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Bytes of scoring request bodies the server holds at once (being read, "
        "parsed or scored); a body that would go over it is answered 503 + Retry-After. "
        "Bounds the memory of concurrent large requests; at least max_body_bytes.",
    )
    body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A scoring request's body must be complete this long after the request "
        "arrives, else 408 and the connection is closed.",
    )
    max_in_flight: int = Field(
        default=32,
        ge=1,
        description="Scoring requests being scored (their bodies complete) before 503 + "
        "Retry-After.",
    )
    retry_after_seconds: int = Field(default=1, ge=0)
    inline_event_limit: int = Field(
        default=5000,
        ge=0,
        description="Requests with at most this many events (customers, for precomputed "
        "features) are scored on the event loop, with no thread hop; larger ones in a worker "
        "thread so that probes and other requests stay responsive.",
    )
    reload_interval_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How often to check the registry alias for a newly promoted version "
        "(0: never; POST /v1/admin/reload still works).",
    )
    shutdown_delay_seconds: float = Field(
        default=0.0,
        ge=0,
        description="On SIGTERM, report not-ready for this long while still serving, so a "
        "load balancer stops sending traffic before the listener closes.",
    )
    playbook_path: Path | None = Field(
        default=None, description="Next-best-action playbook YAML (default: the shipped one)."
    )
    reasons: int = Field(default=3, ge=1, le=10, description="Reasons per head in each score.")
    reasons_method: Literal["path", "treeshap"] = Field(
        default="path",
        description="Attribution behind the reasons: 'path' (each split on the row's "
        "decision path credits its feature with the change of expected value; one tree "
        "walk, microseconds) or 'treeshap' (exact Shapley values from LightGBM, "
        "hundreds of microseconds per head).",
    )
    log_level: str = Field(default="info")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> Settings:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) is below "
                f"max_body_bytes ({self.max_body_bytes}): no body of the largest size "
                "could ever be accepted"
            )
        return self

    @model_validator(mode="after")
    def _keys_present(self) -> Settings:
        if not self.allow_anonymous and not self.all_api_keys():
            raise ValueError(
                "no API keys: set LIFECYCLE_API_KEYS or LIFECYCLE_API_KEYS_FILE "
                "(or LIFECYCLE_ALLOW_ANONYMOUS=true for a local server without keys)"
            )
        return self

    def all_api_keys(self) -> tuple[bytes, ...]:
        """Accepted keys as bytes: ``api_keys`` plus the lines of ``api_keys_file``."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(
                    f"cannot read API keys file {self.api_keys_file}: {exc.strerror}"
                ) from None
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return tuple(k.encode() for k in keys)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings from the environment, built on first use and cached."""
    return Settings()


def settings_with(**overrides: object) -> Settings:
    """Settings from the environment with ``overrides`` (``None`` values are skipped).

    Raises ``ValueError`` with one line naming the setting at fault.
    """
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{where}: {message}" if where else message) from None
