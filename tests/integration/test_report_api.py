"""The report's admin routes and its command: the same use case, bad days refused."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from shop.cli.main import main
from shop.config import get_settings
from shop.reports.models import DailyReport
from tests.fixtures.api import ADMIN_TOKEN, count_rows
from tests.fixtures.reporting import ShopDay

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DAY = "2026-03-29"


@pytest.fixture
def london(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_TIMEZONE", "Europe/London")
    get_settings.cache_clear()


def a_sale(session: Session) -> None:
    shop = ShopDay(session)
    shop.product("HAT", price=2000, currency="EUR", name="Sun hat")
    shop.sell({"HAT": 2}, placed=dt.datetime(2026, 3, 29, 12, tzinfo=dt.UTC))


def problem(response: Any) -> tuple[int, str, str]:
    body = response.json()
    [field] = body["fields"]
    return response.status_code, field["field"], field["type"]


@pytest.mark.usefixtures("london")
def test_post_builds_once_and_get_returns_the_stored_report(
        session: Session, client: TestClient) -> None:
    a_sale(session)
    assert client.get(f"/admin/reports/daily/{DAY}", headers=AUTH).status_code == 404

    built = client.post("/admin/reports/daily", json={"date": DAY}, headers=AUTH)
    again = client.post("/admin/reports/daily", json={"date": DAY}, headers=AUTH)
    stored = client.get(f"/admin/reports/daily/{DAY}", headers=AUTH)

    assert (built.status_code, again.status_code, stored.status_code) == (201, 200, 200)
    assert (built.json()["built_now"], again.json()["built_now"]) == (True, False)
    assert stored.json()["data"] == built.json()["data"]
    assert stored.json()["data"]["money"]["EUR"]["gross"] == 4000
    assert stored.json()["mail"] == {"status": "not_configured", "mailed_at": None,
                                     "resends": 0, "error": None}
    assert (stored.json()["day"], stored.json()["timezone"]) == (DAY, "Europe/London")


@pytest.mark.usefixtures("london")
def test_the_page_shows_the_stored_report_to_a_browser(
        session: Session, client: TestClient) -> None:
    a_sale(session)
    client.post("/admin/reports/daily", json={"date": DAY}, headers=AUTH)
    basic = base64.b64encode(f"ann:{ADMIN_TOKEN}".encode()).decode()

    page = client.get(f"/admin/reports/daily/{DAY}.html",
                      headers={"Authorization": f"Basic {basic}"})

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "Sunday 29 March 2026" in page.text
    assert "40.00 EUR" in page.text
    assert client.get("/admin/reports/daily/2026-03-28.html", headers=AUTH).status_code == 404


@pytest.mark.parametrize("path", [f"/admin/reports/daily/{DAY}",
                                  f"/admin/reports/daily/{DAY}.html"])
def test_report_routes_need_the_admin_token(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong-token-123456"}
                      ).status_code == 401
    assert client.post("/admin/reports/daily", json={"date": DAY}).status_code == 401


@pytest.mark.parametrize("value", ["2026-02-30", "29/03/2026", "", "yesterday", 20260329.5,
                                   None, "2026-03-29T00:00:00+05:00"])
def test_a_bad_date_is_a_422_naming_the_field(client: TestClient, value: Any) -> None:
    response = client.post("/admin/reports/daily", json={"date": value}, headers=AUTH)

    assert response.status_code == 422
    assert [f["field"] for f in response.json()["fields"]] == ["date"]
    assert count_rows(DailyReport) == 0


@pytest.mark.parametrize("path", ["2026-13-01", "2026-02-30", "nope", "2026-03-29x"])
def test_a_bad_date_in_the_path_is_a_422_naming_the_field(client: TestClient, path: str) -> None:
    for suffix in ("", ".html"):
        response = client.get(f"/admin/reports/daily/{path}{suffix}", headers=AUTH)
        assert response.status_code == 422, response.text
        assert [f["field"] for f in response.json()["fields"]] == ["date"]


@pytest.mark.usefixtures("london")
def test_a_day_that_has_not_ended_is_refused_and_nothing_is_stored(client: TestClient) -> None:
    today = dt.datetime.now(dt.UTC).astimezone(get_settings().tz).date()

    for day in (today, today + dt.timedelta(days=1), dt.date(1999, 12, 31)):
        response = client.post("/admin/reports/daily", json={"date": day.isoformat()},
                               headers=AUTH)
        assert problem(response) == (422, "date", "day_not_over")
    assert "has not ended yet in Europe/London" in client.post(
        "/admin/reports/daily", json={"date": today.isoformat()}, headers=AUTH).text
    assert client.get(f"/admin/reports/daily/{today}", headers=AUTH).status_code == 404


@pytest.mark.parametrize("timezone", ["UTC", "America/Los_Angeles", "Pacific/Kiritimati"])
@pytest.mark.parametrize("day", ["9999-12-31", "9999-12-30", "0001-01-01"])
def test_days_at_the_ends_of_the_calendar_are_422_naming_the_date(
        client: TestClient, monkeypatch: pytest.MonkeyPatch, timezone: str, day: str) -> None:
    monkeypatch.setenv("SHOP_TIMEZONE", timezone)
    get_settings.cache_clear()

    response = client.post("/admin/reports/daily", json={"date": day}, headers=AUTH)

    assert problem(response) == (422, "date", "day_not_over"), response.text
    for suffix in ("", ".html"):
        assert client.get(f"/admin/reports/daily/{day}{suffix}", headers=AUTH
                          ).status_code == 404
    assert count_rows(DailyReport) == 0


def test_a_resend_without_recipients_is_refused(client: TestClient) -> None:
    response = client.post("/admin/reports/daily", json={"date": DAY, "resend": True},
                           headers=AUTH)

    assert problem(response) == (422, "resend", "no_recipients")
    assert client.get(f"/admin/reports/daily/{DAY}", headers=AUTH).status_code == 404


def test_unknown_fields_are_refused(client: TestClient) -> None:
    response = client.post("/admin/reports/daily", json={"date": DAY, "force": True},
                           headers=AUTH)

    assert problem(response)[:2] == (422, "force")


def test_the_routes_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    assert set(paths["/admin/reports/daily"]) == {"post"}
    assert set(paths["/admin/reports/daily/{date}"]) == {"get"}
    assert set(paths["/admin/reports/daily/{date}.html"]) == {"get"}


# ---- the command ------------------------------------------------------------------------

@pytest.fixture
def mail_to_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHOP_TIMEZONE", "Europe/London")
    monkeypatch.setenv("SHOP_REPORT_RECIPIENTS", "boss@example.com")
    get_settings.cache_clear()
    return tmp_path / "mail"


def test_the_command_builds_mails_once_and_prints_the_text(
        session: Session, mail_to_files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_sale(session)

    assert main(["report", "daily", "--date", DAY]) == 0
    first = capsys.readouterr()
    assert main(["report", "daily", "--date", DAY]) == 0
    second = capsys.readouterr()
    assert main(["report", "daily", "--date", DAY, "--resend"]) == 0
    third = capsys.readouterr()

    assert first.out.startswith("DAILY SALES REPORT\nSunday 29 March 2026, Europe/London")
    assert "40.00 EUR" in first.out
    assert second.out == first.out
    assert first.err.strip() == (f"shop report daily: {DAY} built now; "
                                 "mailed to boss@example.com")
    assert "already stored, not rebuilt; already mailed" in second.err
    assert "mailed to boss@example.com" in third.err
    assert len(list(mail_to_files.glob("*.eml"))) == 2


@pytest.mark.parametrize("value", ["2026-02-30", "29-03-2026", "20260329", "2026-3-29", "soon"])
def test_the_command_refuses_a_bad_date_in_one_line(
        schema_url: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "daily", "--date", value]) == 2

    err = capsys.readouterr().err
    assert err == f"shop report daily: --date must be a day as YYYY-MM-DD, not {value!r}\n"


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01"])
def test_the_command_refuses_a_day_at_the_ends_of_the_calendar(
        schema_url: str, day: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "daily", "--date", day]) == 2

    assert capsys.readouterr().err.startswith(f"shop report daily: {day} ")


def test_the_command_refuses_a_day_that_has_not_ended(
        schema_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)

    assert main(["report", "daily", "--date", tomorrow.isoformat()]) == 2

    assert capsys.readouterr().err == (
        f"shop report daily: {tomorrow} has not ended yet in UTC\n")
