"""Settings: one pydantic-settings class, read from ``SHOP_`` variables and ``.env``."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

VAR_DIR = Path("var")
MIN_ADMIN_TOKEN = 16


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, reprs and messages)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


class Settings(BaseSettings):
    """Every setting the shop reads; defaults run on one machine with no servers."""

    model_config = SettingsConfigDict(env_prefix="SHOP_", env_file=".env", extra="ignore")

    data_dir: Path = VAR_DIR
    database_url: str = ""
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    broker_url: str = ""
    broker_polling_interval: float = Field(default=0.1, gt=0)

    payment_provider: Literal["stripe", "dummy"] | None = None
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    dummy_payment_latency_ms: int = Field(default=0, ge=0)
    # "account,endpoint" requests/s the dummy provider allows before answering 429
    # (Stripe's: "100,25" live, "25,25" in a sandbox); unset: no limit.
    dummy_payment_limits: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?,\d+(\.\d+)?$")
    stripe_max_rps: float | None = Field(default=None, gt=0)
    stripe_endpoint_rps: float = Field(default=25.0, gt=0)
    # Accepted for deployments that still set it; the shared budget needs no share.
    payment_processes: int = Field(default=1, ge=1)
    payment_faults: Path | None = None

    smtp_url: SecretStr | None = None
    mail_from: str = "shop@localhost"
    mail_dir: Path | None = None
    report_recipients: str = ""

    admin_token: SecretStr | None = None
    requires_action_timeout: float = Field(default=3600.0, gt=0)
    timezone: str = "UTC"
    log_format: Literal["json", "console"] = "console"
    checkout_rate: float = Field(default=50.0, gt=0)  # per client, per API process
    checkout_burst: float = Field(default=100.0, ge=1)
    trust_forwarded_for: bool = False
    trusted_proxy_hops: int = Field(default=1, ge=1)  # proxies that append X-Forwarded-For
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    report_time: str = "00:15"
    report_low_stock: int = Field(default=5, ge=0)

    retry_max_attempts: int = Field(default=5, ge=1)
    retry_base_delay: float = Field(default=2.0, ge=0)
    retry_max_delay: float = Field(default=300.0, ge=0)
    max_deliveries: int = Field(default=10, ge=1)
    stuck_after_seconds: float = Field(default=300.0, ge=1)

    relay_batch_size: int = Field(default=100, ge=1)
    relay_poll_interval: float = Field(default=0.1, gt=0)
    publish_on_commit: bool = True
    outbox_grace_seconds: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        """Unset locations fall back to files under ``data_dir`` (``./var``)."""
        self.database_url = self.database_url or f"sqlite:///{self.data_dir}/shop.sqlite3"
        self.broker_url = self.broker_url or f"filesystem://{self.data_dir}/broker"
        self.mail_dir = self.mail_dir or self.data_dir / "mail"
        return self

    def __repr_args__(self) -> Any:
        """Settings print without the passwords inside the database and broker URLs."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in ("database_url", "broker_url") else value

    @field_validator("admin_token", "stripe_webhook_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """``SHOP_ADMIN_TOKEN=`` (an unset variable substituted) means not set, not ""."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("admin_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < MIN_ADMIN_TOKEN:
            raise ValueError(f"SHOP_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters "
                             "(generate one with: python -c 'import secrets; "
                             "print(secrets.token_urlsafe(24))')")
        return value

    @property
    def mail_path(self) -> Path:
        assert self.mail_dir is not None
        return self.mail_dir

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except ZoneInfoNotFoundError as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("report_time")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        hour, _, minute = value.partition(":")
        if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
            raise ValueError("expected HH:MM")
        return value

    @property
    def provider(self) -> Literal["stripe", "dummy"]:
        """The payment provider in force: explicit, else stripe when a key is set."""
        if self.payment_provider is not None:
            return self.payment_provider
        return "stripe" if self.stripe_api_key is not None else "dummy"

    @property
    def relay_grace(self) -> float:
        """How long the relay leaves a row to its direct publish and its consumer."""
        return self.outbox_grace_seconds if self.publish_on_commit else 0.0

    @property
    def webhook_secrets(self) -> list[str]:
        """The webhook endpoint secrets in force (several during a rotation)."""
        if self.stripe_webhook_secret is None:
            return []
        return [s.strip() for s in self.stripe_webhook_secret.get_secret_value().split(",")
                if s.strip()]

    @property
    def provider_limits(self) -> tuple[float, float] | None:
        """The provider's request rates for the whole deployment: (account, endpoint)
        per second, or None (unpaced).

        ``SHOP_STRIPE_MAX_RPS`` when set, else Stripe's documented limits: 100 with a
        live key, 25 with a test key; each endpoint ``SHOP_STRIPE_ENDPOINT_RPS`` (25).
        The dummy provider is unpaced unless asked. One budget for every process
        (``shop.payments.budget``): nothing is divided by a process count.
        """
        total = self.stripe_max_rps
        if total is None and self.provider == "stripe" and self.stripe_api_key is not None:
            live = self.stripe_api_key.get_secret_value().startswith(("sk_live", "rk_live"))
            total = 100.0 if live else 25.0
        return None if total is None else (total, min(total, self.stripe_endpoint_rps))

    @property
    def broker_is_amqp(self) -> bool:
        return self.broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))

    @property
    def recipients(self) -> list[str]:
        return [a.strip() for a in self.report_recipients.split(",") if a.strip()]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def report_clock(self) -> dt.time:
        """``SHOP_REPORT_TIME`` as a local time of day."""
        hour, _, minute = self.report_time.partition(":")
        return dt.time(int(hour), int(minute))


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests clear the cache after changing the environment."""
    return Settings()
