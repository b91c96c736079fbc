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
    """``url`` with any password replaced by ``***`` (for logs, reprs and messages); a
    broker URL listing a cluster's nodes (``amqp://…//;amqp://…//``) node by node."""
    if ";" in url:
        return ";".join(redact_url(one) for one in url.split(";"))
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


class Settings(BaseSettings):
    """Every setting the shop reads; defaults run on one machine with no servers.

    Each field's description is what docs/settings.md and .env.example say about it
    (``shop settings-doc`` writes both)."""

    model_config = SettingsConfigDict(env_prefix="SHOP_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=VAR_DIR, description=(
        "where the embedded defaults live (SQLite file, filesystem broker, `.eml` mail, "
        "dummy payments, beat schedule)"))
    database_url: str = Field(default="", description=(
        "SQLAlchemy URL; PostgreSQL in production (`postgresql+psycopg://…`); unset: a "
        "SQLite file, `$SHOP_DATA_DIR/shop.sqlite3`"))
    db_pool_size: int = Field(default=5, ge=1, description=(
        "each process's SQLAlchemy pool; at least a threads pool's size"))
    db_max_overflow: int = Field(default=10, ge=0, description=(
        "connections a process may open beyond its pool"))
    broker_url: str = Field(default="", description=(
        "Celery broker; RabbitMQ in production (`amqp://…`); unset: an embedded broker "
        "needing no server (kombu's filesystem transport under `$SHOP_DATA_DIR/broker`)"))
    broker_polling_interval: float = Field(default=0.1, gt=0, description=(
        "seconds between polls of the embedded broker"))
    broker_queue_type: Literal["quorum", "classic"] = Field(default="quorum", description=(
        "the type of every queue the shop declares on RabbitMQ: `quorum` (replicated, "
        "for a cluster) or `classic` (one node); fixed when a queue is created, so an "
        "existing deployment changes it with `shop broker migrate-queues` "
        "(docs/deployment.md); the embedded broker has no queue types"))

    payment_provider: Literal["stripe", "dummy"] | None = Field(default=None, description=(
        "the payment provider; unset: `stripe` when `SHOP_STRIPE_API_KEY` is set, else "
        "`dummy`"))
    stripe_api_key: SecretStr | None = Field(default=None, description=(
        "Stripe secret key (`sk_live_…`, `sk_test_…`, or a restricted `rk_…`)"))
    stripe_api_base: str | None = Field(default=None, description=(
        "Stripe API base address (a local Stripe emulator in tests); unset: Stripe's own"))
    stripe_webhook_secret: SecretStr | None = Field(default=None, description=(
        "endpoint secret for webhook signatures; several, comma-separated, during a "
        "rotation; unset: the webhook route answers 503"))
    dummy_payment_latency_ms: int = Field(default=0, ge=0, description=(
        "how long each dummy-provider call takes, to stand in for a real provider"))
    dummy_payment_limits: str | None = Field(
        default=None, pattern=r"^\d+(\.\d+)?,\d+(\.\d+)?$", description=(
            "`account,endpoint` requests/s the dummy provider allows before it answers 429 "
            "with `Retry-After`, as Stripe would (`100,25` live, `25,25` in a sandbox); "
            "unset: no limit"))
    stripe_max_rps: float | None = Field(default=None, gt=0, description=(
        "the most payment-provider requests per second for the whole deployment (one "
        "budget, kept in the database); unset: Stripe's 25 with a test key, 100 with a "
        "live key, and no limit on the dummy provider"))
    stripe_endpoint_rps: float = Field(default=25.0, gt=0, description=(
        "the most requests per second to one provider endpoint (create, retrieve, "
        "confirm, capture, cancel, refund), within `SHOP_STRIPE_MAX_RPS`"))
    payment_processes: int = Field(default=1, ge=1, description=(
        "accepted and ignored: the shared budget needs no per-process share (it divided "
        "`SHOP_STRIPE_MAX_RPS` among processes)"))
    payment_faults: Path | None = Field(default=None, description=(
        "a JSON file of faults to inject at the payment gateway boundary, for drills and "
        "tests (`shop/payments/faults.py`); never set it in production"))

    smtp_url: SecretStr | None = Field(default=None, description=(
        "`smtp://[user:pass@]host:port` (`smtps://` or `?starttls=1` for TLS); unset: "
        "emails are written as `.eml` files under `SHOP_MAIL_DIR`"))
    mail_from: str = Field(default="shop@localhost", description="sender address")
    mail_dir: Path | None = Field(default=None, description=(
        "where the file mailer writes; unset: `$SHOP_DATA_DIR/mail`"))
    report_recipients: str = Field(default="", description=(
        "comma-separated management addresses for the daily report; unset: the report "
        "is built and stored, not mailed"))

    admin_token: SecretStr | None = Field(default=None, description=(
        "bearer token for `/admin`, at least 16 characters; unset or empty: `/admin` "
        "answers 503 (`shop dev` generates one and prints it)"))
    requires_action_timeout: float = Field(default=3600.0, gt=0, description=(
        "seconds an order may wait for 3-D Secure before it is cancelled and failed"))
    timezone: str = Field(default="UTC", description=(
        "the shop's local day, for the daily report (an IANA zone, `Europe/London`)"))
    log_format: Literal["json", "console"] = Field(default="console", description=(
        "one JSON object per line, or text (every process: API and uvicorn, workers, "
        "beat, relay; tracebacks go inside the line)"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description=(
            "the least severe lines every process writes (overrides Celery's `-l`)"))
    tracing: str = Field(default="off", description=(
        "OpenTelemetry traces (the `tracing` extra): `off`; `otlp`, OTLP over HTTP to "
        "`OTEL_EXPORTER_OTLP_ENDPOINT`; `console`, spans on stdout; or `file:<path>`, one "
        "JSON object per span appended to `path` by every process"))
    checkout_rate: float = Field(default=50.0, gt=0, description=(
        "checkouts a second per client, per API process"))
    checkout_burst: float = Field(default=100.0, ge=1, description=(
        "checkouts a client may make at once before the rate applies, per API process"))
    trust_forwarded_for: bool = Field(default=False, description=(
        "take the client from `X-Forwarded-For` (only behind proxies that append to it)"))
    trusted_proxy_hops: int = Field(default=1, ge=1, description=(
        "how many proxies in front of the API append to `X-Forwarded-For`: the client is "
        "that many entries from the right"))
    metrics_port: int | None = Field(default=None, ge=1, le=65535, description=(
        "a worker serves its Prometheus metrics on this port; unset: it serves none"))
    report_time: str = Field(default="00:15", description=(
        "local time (HH:MM) at which beat builds the previous day's report"))
    report_low_stock: int = Field(default=5, ge=0, description=(
        "available units under which the daily report lists a product"))
    report_unshipped_days: int = Field(default=3, ge=0, le=365, description=(
        "days after confirmation from which the daily report lists an order that has "
        "not shipped (nothing, or not everything, left the shelf)"))

    retry_max_attempts: int = Field(default=5, ge=1, description=(
        "attempts of a step that fails transiently before the order fails"))
    retry_base_delay: float = Field(default=2.0, ge=0, description=(
        "seconds before the first retry; doubles each time, with jitter"))
    retry_max_delay: float = Field(default=300.0, ge=0, description=(
        "the longest wait between retries, in seconds"))
    max_deliveries: int = Field(default=10, ge=1, description=(
        "starts of one task message before it is dead-lettered (a task that kills its "
        "worker every time)"))
    stuck_after_seconds: float = Field(default=300.0, ge=1, description=(
        "how long an order may sit still before the sweeper resends its step"))

    relay_batch_size: int = Field(default=100, ge=1, description=(
        "outbox rows the relay reads at a time"))
    relay_poll_interval: float = Field(default=0.1, gt=0, description=(
        "seconds between the relay's reads of the outbox"))
    publish_on_commit: bool = Field(default=True, description=(
        "publish outbox rows right after their commit (off: the relay carries every "
        "message)"))
    outbox_grace_seconds: float = Field(default=10.0, ge=0, description=(
        "how long the relay leaves an outbox row to its direct publish and its consumer "
        "before sending it itself"))

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

    @field_validator("tracing")
    @classmethod
    def _tracing_mode(cls, value: str) -> str:
        if value in ("off", "otlp", "console") or (value.startswith("file:") and value[5:]):
            return value
        raise ValueError("SHOP_TRACING is off, otlp, console or file:<path>")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

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
