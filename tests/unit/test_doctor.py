"""The doctor's judgement of the payment settings (no network: only the key's shape)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from shop.cli import doctor
from shop.config import Settings


def settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "mode"), [("sk_test_abc", "test"), ("rk_live_abc", "live"),
                                           ("sk_live_abc", "live")])
def test_a_stripe_secret_key_is_reported_by_its_mode_never_by_its_value(key: str,
                                                                        mode: str) -> None:
    finding = doctor.check_payments(settings(stripe_api_key=SecretStr(key)))
    assert (finding.status, f"Stripe in {mode} mode" in finding.detail) == ("ok", True)
    assert key not in finding.line()


def test_a_publishable_key_is_refused_with_the_kind_of_key_to_use() -> None:
    finding = doctor.check_payments(settings(stripe_api_key=SecretStr("pk_live_abc")))
    assert finding.status == "FAIL"
    assert "publishable" in finding.detail
    assert "sk_live_" in finding.fix


def test_stripe_without_a_key_is_a_problem_and_no_key_at_all_means_the_dummy() -> None:
    assert doctor.check_payments(settings(payment_provider="stripe")).status == "FAIL"
    dummy = doctor.check_payments(settings())
    assert (dummy.status, dummy.detail) == (
        "warn", "the dummy provider (no SHOP_STRIPE_API_KEY): no money moves")


def test_a_live_key_with_injected_faults_is_a_problem(tmp_path: Path) -> None:
    finding = doctor.check_payments(settings(stripe_api_key=SecretStr("sk_live_abc"),
                                             payment_faults=tmp_path / "faults.json"))
    assert finding.status == "FAIL"
    assert "SHOP_PAYMENT_FAULTS" in finding.fix


def test_stripe_without_a_webhook_secret_is_a_problem_the_dummy_does_not_need_one() -> None:
    missing = doctor.check_webhooks(settings(stripe_api_key=SecretStr("sk_test_abc")))
    assert missing.status == "FAIL"
    assert "503" in missing.detail
    assert "whsec_" in missing.fix
    rotating = doctor.check_webhooks(settings(stripe_api_key=SecretStr("sk_test_abc"),
                                              stripe_webhook_secret=SecretStr("whsec_a,whsec_b")))
    assert (rotating.status, rotating.detail) == ("ok", "2 webhook signing secrets set")
    assert doctor.check_webhooks(settings()).status == "skip"


def test_a_failing_check_never_shows_a_password_from_the_settings() -> None:
    checked = settings(database_url="postgresql+psycopg://shop:pa55word@db.invalid/shop")

    def boom() -> doctor.Finding:
        raise RuntimeError("could not log in with pa55word")

    finding = doctor._guarded("database", boom, doctor._secrets(checked))
    assert finding.status == "FAIL"
    assert "pa55word" not in finding.line()
