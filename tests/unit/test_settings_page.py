"""docs/settings.md and .env.example list exactly the settings the code has, as
``shop settings-doc`` writes them from ``shop.config.Settings``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from shop.cli import settings_doc
from shop.cli.main import main
from shop.config import Settings

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "settings.md"
ENV_EXAMPLE = REPO / ".env.example"
REGENERATE = ("run `shop settings-doc > docs/settings.md` and "
              "`shop settings-doc --env > .env.example`")
# The settings CONTRACT.md promises storefronts and operators.
CONTRACT = ("SHOP_DATABASE_URL", "SHOP_BROKER_URL", "SHOP_PAYMENT_PROVIDER",
            "SHOP_STRIPE_API_KEY", "SHOP_STRIPE_API_BASE", "SHOP_STRIPE_WEBHOOK_SECRET",
            "SHOP_SMTP_URL", "SHOP_MAIL_FROM", "SHOP_REPORT_RECIPIENTS", "SHOP_ADMIN_TOKEN",
            "SHOP_TIMEZONE", "SHOP_REPORT_TIME", "SHOP_RETRY_MAX_ATTEMPTS",
            "SHOP_RETRY_BASE_DELAY", "SHOP_RETRY_MAX_DELAY", "SHOP_DUMMY_PAYMENT_LATENCY_MS",
            "SHOP_REQUIRES_ACTION_TIMEOUT", "SHOP_STRIPE_MAX_RPS", "SHOP_REPORT_LOW_STOCK",
            "SHOP_LOG_FORMAT")


def in_code() -> set[str]:
    return {f"SHOP_{name.upper()}" for name in Settings.model_fields}


def on_page() -> set[str]:
    return set(re.findall(r"^\| `(SHOP_[A-Z0-9_]+)` \|", PAGE.read_text(), re.MULTILINE))


def in_env_example() -> set[str]:
    return set(re.findall(r"^(?:# )?(SHOP_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(),
                          re.MULTILINE))


def test_every_setting_in_the_code_is_on_the_page_and_the_page_has_no_other() -> None:
    assert in_code() - on_page() == set(), f"missing from docs/settings.md: {REGENERATE}"
    assert on_page() - in_code() == set(), f"not settings of the code: {REGENERATE}"


def test_every_setting_in_the_code_is_in_env_example_and_it_has_no_other() -> None:
    assert in_code() - in_env_example() == set(), f"missing from .env.example: {REGENERATE}"
    assert in_env_example() - in_code() == set(), f"not settings of the code: {REGENERATE}"


def test_the_page_and_env_example_are_what_the_generator_writes_now() -> None:
    assert PAGE.read_text() == settings_doc.page(), REGENERATE
    assert ENV_EXAMPLE.read_text() == settings_doc.env_example(), REGENERATE


def test_every_setting_has_a_description_and_the_contracts_are_listed() -> None:
    assert [row.variable for row in settings_doc.rows() if not row.description] == []
    assert set(CONTRACT) - on_page() == set()


def test_the_command_prints_the_page_and_the_env_example(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings-doc"]) == 0
    assert capsys.readouterr().out == PAGE.read_text()
    assert main(["settings-doc", "--env"]) == 0
    assert capsys.readouterr().out == ENV_EXAMPLE.read_text()


def test_a_copy_of_env_example_changes_no_setting_and_shows_no_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SHOP_"):
            monkeypatch.delenv(key)
    copied = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    assert copied.model_dump() == Settings(_env_file=None).model_dump()  # type: ignore[call-arg]
    for row in settings_doc.rows():
        if row.secret:
            assert f"\n# {row.variable}=\n" in ENV_EXAMPLE.read_text()
