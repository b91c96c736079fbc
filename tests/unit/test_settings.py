"""Settings: embedded defaults, ``SHOP_`` overrides, secrets that never print."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy.engine import make_url

from shop.config import Settings, get_settings

SECRETS = {
    "stripe_api_key": "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "stripe_webhook_secret": "whsec_s3cr3t-webhook",
    "admin_token": "admin-t0ken-do-not-print",
    "smtp_url": "smtp://mailer:hunter2-password@smtp.example.com:587?starttls=1",
}


@pytest.fixture
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the per-test overrides tests/conftest.py sets, leaving the built-in defaults."""
    for name in ("SHOP_DATABASE_URL", "SHOP_BROKER_URL", "SHOP_MAIL_DIR"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()


@pytest.mark.usefixtures("no_overrides")
def test_defaults_need_no_servers() -> None:
    settings = get_settings()

    database = make_url(settings.database_url)
    assert database.get_backend_name() == "sqlite"
    assert database.database is not None
    assert Path(database.database).parts[0] == "var"
    assert settings.broker_url.startswith("filesystem://var/")
    assert not settings.broker_is_amqp
    assert settings.mail_dir == Path("var/mail")


@pytest.mark.usefixtures("no_overrides")
def test_defaults_match_the_contract() -> None:
    settings = get_settings()

    assert settings.provider == "dummy"
    assert settings.stripe_api_key is None
    assert settings.stripe_api_base is None
    assert settings.stripe_webhook_secret is None
    assert settings.smtp_url is None
    assert settings.admin_token is None
    assert settings.mail_from == "shop@localhost"
    assert settings.recipients == []
    assert settings.timezone == "UTC"
    assert settings.report_time == "00:15"
    assert settings.report_clock == dt.time(0, 15)
    assert settings.report_low_stock == 5
    assert settings.retry_max_attempts == 5
    assert settings.retry_base_delay == 2
    assert settings.retry_max_delay == 300
    assert settings.dummy_payment_latency_ms == 0


def test_shop_environment_variables_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", "postgresql+psycopg://shop@db.internal/shop")
    monkeypatch.setenv("SHOP_BROKER_URL", "amqp://guest:guest@rabbit.internal:5672//")
    monkeypatch.setenv("SHOP_TIMEZONE", "Europe/London")
    monkeypatch.setenv("SHOP_REPORT_TIME", "06:30")
    monkeypatch.setenv("SHOP_RETRY_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("SHOP_REPORT_RECIPIENTS", "ceo@example.com, ops@example.com,")
    monkeypatch.setenv("SHOP_MAIL_FROM", "orders@example.com")
    get_settings.cache_clear()

    settings = get_settings()

    assert settings.database_url == "postgresql+psycopg://shop@db.internal/shop"
    assert settings.broker_is_amqp
    assert settings.tz.key == "Europe/London"
    assert settings.report_time == "06:30"
    assert settings.retry_max_attempts == 7
    assert settings.recipients == ["ceo@example.com", "ops@example.com"]
    assert settings.mail_from == "orders@example.com"


def test_dotenv_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tests/conftest.py runs every test in tmp_path, so this is the .env Settings sees.
    (tmp_path / ".env").write_text("SHOP_MAIL_FROM=dotenv@example.com\nSHOP_TIMEZONE=Asia/Tokyo\n")
    monkeypatch.setenv("SHOP_TIMEZONE", "America/New_York")

    settings = Settings()

    assert settings.mail_from == "dotenv@example.com"
    assert settings.timezone == "America/New_York"


def test_secrets_are_secret_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(f"SHOP_{name.upper()}", value)
    get_settings.cache_clear()

    settings = get_settings()

    for name, value in SECRETS.items():
        secret = getattr(settings, name)
        assert isinstance(secret, SecretStr), name
        assert secret.get_secret_value() == value


@pytest.mark.parametrize("render", [repr, str], ids=["repr", "str"])
def test_secrets_never_appear_when_settings_are_printed(
    render: Callable[[object], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(f"SHOP_{name.upper()}", value)
    get_settings.cache_clear()

    text = render(get_settings())

    for value in SECRETS.values():
        assert value not in text
    assert "hunter2" not in text


def test_provider_is_stripe_when_a_key_is_set() -> None:
    settings = Settings(stripe_api_key=SecretStr("sk_test_123"))

    assert settings.provider == "stripe"


def test_provider_is_dummy_without_a_key() -> None:
    assert Settings().provider == "dummy"


def test_explicit_provider_wins_over_the_key() -> None:
    settings = Settings(stripe_api_key=SecretStr("sk_test_123"), payment_provider="dummy")

    assert settings.provider == "dummy"


def test_unknown_provider_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PAYMENT_PROVIDER", "paypal")

    with pytest.raises(ValidationError, match="payment_provider"):
        Settings()


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe/Londres", "../etc/passwd", ""])
def test_unknown_timezone_is_rejected(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_TIMEZONE", zone)

    with pytest.raises(ValidationError, match="timezone"):
        Settings()


@pytest.mark.parametrize("value", ["24:00", "7", "12:60", "noon"])
def test_malformed_report_time_is_rejected(value: str) -> None:
    with pytest.raises(ValidationError, match="report_time"):
        Settings(report_time=value)


def test_report_settings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_REPORT_TIME", "06:30")
    monkeypatch.setenv("SHOP_REPORT_LOW_STOCK", "12")
    settings = Settings()
    assert settings.report_clock == dt.time(6, 30)
    assert settings.report_low_stock == 12


def test_a_negative_low_stock_threshold_is_rejected() -> None:
    with pytest.raises(ValidationError, match="report_low_stock"):
        Settings(report_low_stock=-1)


def test_data_dir_roots_every_embedded_default(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    for name in ("SHOP_DATABASE_URL", "SHOP_BROKER_URL", "SHOP_MAIL_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHOP_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path}/data/shop.sqlite3"
    assert settings.broker_url == f"filesystem://{tmp_path}/data/broker"
    assert settings.mail_path == tmp_path / "data" / "mail"
