"""Mail backends without a network: URL parsing, error mapping, files, composing."""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from shop.config import Settings
from shop.notifications.mailer import (
    Attachment,
    FileMailer,
    MailError,
    MailPermanentError,
    MailTransientError,
    SmtpEndpoint,
    SmtpMailer,
    build_mailer,
    compose,
    parse_smtp_url,
)


def message(message_id: str = "<abc123@shop>", text: str = "Hello") -> EmailMessage:
    return compose(
        sender="shop@localhost", recipients=["ada@example.com", "bob@example.com"],
        subject="Your order", text=text, html=f"<p>{text}</p>", message_id=message_id,
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com:2525", SmtpEndpoint("mail.example.com", 2525)),
        ("smtp://localhost", SmtpEndpoint("localhost", 25)),
        ("smtps://mail.example.com", SmtpEndpoint("mail.example.com", 465, "ssl")),
        ("smtps://mail.example.com:1465", SmtpEndpoint("mail.example.com", 1465, "ssl")),
        ("smtp://mail.example.com?starttls=1", SmtpEndpoint("mail.example.com", 587, "starttls")),
        ("smtp://h:25?starttls=true", SmtpEndpoint("h", 25, "starttls")),
        ("smtp://h:25?starttls=0", SmtpEndpoint("h", 25, "plain")),
        (
            "smtp://apikey:s3cret@h:587?starttls=1",
            SmtpEndpoint("h", 587, "starttls", "apikey", "s3cret"),
        ),
        (
            "smtp://user%40example.com:p%40ss%3Aw%2Frd@h:25",
            SmtpEndpoint("h", 25, "plain", "user@example.com", "p@ss:w/rd"),
        ),
        ("smtp://user:@h:25", SmtpEndpoint("h", 25, "plain", "user", "")),
        ("smtp://[::1]:2525", SmtpEndpoint("::1", 2525)),
    ],
)
def test_smtp_url_is_parsed(url: str, expected: SmtpEndpoint) -> None:
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://h:25", "smtp:// or smtps://"),
        ("smtp://:25", "no host"),
        ("smtp://h:notaport", "invalid port"),
        ("smtps://h?starttls=1", "already uses TLS"),
        ("smtp://h?starttls=maybe", "starttls must be"),
        ("smtp://h?tls=1", "unknown SMTP URL option"),
    ],
)
def test_bad_smtp_url_is_refused(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_smtp_url(url)


def test_password_stays_out_of_reprs_and_errors() -> None:
    mailer = SmtpMailer("smtp://user:hunter2@h:25")
    assert "hunter2" not in repr(mailer)
    with pytest.raises(ValueError, match="invalid port") as info:
        parse_smtp_url("smtp://user:hunter2@h:bad")
    assert "hunter2" not in str(info.value)


class FakeSMTP:
    """Records what the mailer asks of an SMTP connection; fails on demand."""

    instances: list[FakeSMTP] = []
    fail_with: BaseException | None = None
    refused: dict[str, tuple[int, bytes]] = {}

    def __init__(self, host: str, port: int, timeout: float = 0, **kwargs: Any) -> None:
        self.calls: list[tuple[Any, ...]] = [("connect", host, port, timeout, type(self).__name__)]
        self.kwargs = kwargs
        FakeSMTP.instances.append(self)

    def starttls(self, context: ssl.SSLContext | None = None) -> None:
        self.calls.append(("starttls",))

    def login(self, user: str, password: str) -> None:
        self.calls.append(("login", user, password))

    def send_message(self, msg: EmailMessage) -> dict[str, tuple[int, bytes]]:
        if FakeSMTP.fail_with is not None:
            raise FakeSMTP.fail_with
        self.calls.append(("send", msg["Message-ID"]))
        return FakeSMTP.refused

    def quit(self) -> None:
        self.calls.append(("quit",))
        raise smtplib.SMTPServerDisconnected("gone before QUIT")

    def close(self) -> None:
        self.calls.append(("close",))


class FakeSMTPSSL(FakeSMTP):
    pass


@pytest.fixture
def fake_smtp(monkeypatch: pytest.MonkeyPatch) -> type[FakeSMTP]:
    FakeSMTP.instances = []
    FakeSMTP.fail_with = None
    FakeSMTP.refused = {}
    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    monkeypatch.setattr(smtplib, "SMTP_SSL", FakeSMTPSSL)
    return FakeSMTP


def test_plain_smtp_sends_without_tls_or_login(fake_smtp: type[FakeSMTP]) -> None:
    SmtpMailer("smtp://h:2525", timeout=5).send(message())
    [conn] = fake_smtp.instances
    assert conn.calls == [
        ("connect", "h", 2525, 5, "FakeSMTP"), ("send", "<abc123@shop>"), ("quit",), ("close",),
    ]


def test_starttls_upgrades_then_logs_in_with_decoded_credentials(
    fake_smtp: type[FakeSMTP],
) -> None:
    SmtpMailer("smtp://user%40x.com:p%40ss@h:587?starttls=1").send(message())
    [conn] = fake_smtp.instances
    assert [c[0] for c in conn.calls] == ["connect", "starttls", "login", "send", "quit", "close"]
    assert ("login", "user@x.com", "p@ss") in conn.calls


def test_smtps_connects_over_tls_from_the_start(fake_smtp: type[FakeSMTP]) -> None:
    SmtpMailer("smtps://u:p@h").send(message())
    [conn] = fake_smtp.instances
    assert conn.calls[0] == ("connect", "h", 465, 30, "FakeSMTPSSL")
    assert isinstance(conn.kwargs["context"], ssl.SSLContext)
    assert ("starttls",) not in conn.calls


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (ConnectionRefusedError(111, "Connection refused"), MailTransientError),
        (ConnectionResetError(104, "reset"), MailTransientError),
        (TimeoutError("timed out"), MailTransientError),
        (smtplib.SMTPServerDisconnected("closed"), MailTransientError),
        (smtplib.SMTPDataError(451, b"try later"), MailTransientError),
        (smtplib.SMTPSenderRefused(421, b"busy", "shop@localhost"), MailTransientError),
        (smtplib.SMTPDataError(554, b"spam"), MailPermanentError),
        (smtplib.SMTPAuthenticationError(535, b"bad credentials"), MailPermanentError),
        (smtplib.SMTPRecipientsRefused({"a@x": (550, b"no such user")}), MailPermanentError),
        (smtplib.SMTPRecipientsRefused({"a@x": (450, b"greylisted")}), MailTransientError),
        (smtplib.SMTPNotSupportedError("STARTTLS not supported"), MailPermanentError),
        (ssl.SSLCertVerificationError("bad cert"), MailPermanentError),
    ],
)
def test_smtp_errors_become_mail_errors(
    fake_smtp: type[FakeSMTP], failure: BaseException, expected: type[MailError]
) -> None:
    fake_smtp.fail_with = failure
    with pytest.raises(expected) as info:
        SmtpMailer("smtp://h:25").send(message())
    assert info.value.__cause__ is failure


def test_some_recipients_refused_is_not_an_error(
    fake_smtp: type[FakeSMTP], caplog: pytest.LogCaptureFixture
) -> None:
    from shop import logs

    logs.configure("console")
    fake_smtp.refused = {"bob@example.com": (550, b"no such user")}
    SmtpMailer("smtp://h:25").send(message())
    # Logged, with the address masked as every address in the shop's logs is.
    assert "b***@example.com: 550 no such user" in caplog.text


def test_file_mailer_writes_one_eml_named_from_the_message_id(tmp_path: Path) -> None:
    directory = tmp_path / "mail"
    mailer = FileMailer(directory)
    mailer.send(message("<abc123@shop>", text="first"))
    mailer.send(message("<abc123@shop>", text="second"))
    [path] = directory.iterdir()
    assert path.name == "abc123@shop.eml"
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Message-ID"] == "<abc123@shop>"
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().strip() == "first"


def test_file_mailer_names_are_safe_file_names(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path)
    path = mailer.path_for(message("<../../etc/passwd@evil>"))
    assert path.parent == tmp_path
    assert "/" not in path.name
    mailer.send(message("<../../etc/passwd@evil>"))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_file_mailer_refuses_a_message_without_id(tmp_path: Path) -> None:
    msg = message()
    del msg["Message-ID"]
    with pytest.raises(ValueError, match="Message-ID"):
        FileMailer(tmp_path).send(msg)


def test_file_mailer_write_failure_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(MailTransientError):
        FileMailer(blocker).send(message())


def test_compose_builds_text_and_html_alternatives() -> None:
    msg = message("<id-1@shop>", text="Héllo")
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Message-ID"] == "<id-1@shop>"
    assert msg["To"] == "ada@example.com, bob@example.com"
    assert msg["From"] == "shop@localhost"
    assert msg["Subject"] == "Your order"
    date = msg["Date"].datetime
    assert date.utcoffset() is not None
    assert date.utcoffset().total_seconds() == 0


def test_compose_adds_attachments_after_the_alternatives() -> None:
    csv = "sku,name\r\nMUG,Bl\u00e5 mug\r\n".encode("utf-8-sig")
    msg = compose(sender="shop@localhost", recipients=["ada@example.com"], subject="Report",
                  text="Hello", html="<p>Hello</p>", message_id="<r@shop>",
                  attachments=[Attachment("sales.csv", csv, "text/csv"),
                               Attachment("chart.png", b"\x89PNG", "image/png")])
    wire = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(wire, EmailMessage)

    assert wire.get_content_type() == "multipart/mixed"
    parts = list(wire.iter_parts())
    assert [p.get_content_type() for p in parts] == ["multipart/alternative", "text/csv",
                                                     "image/png"]
    assert [p.get_content_type() for p in parts[0].iter_parts()] == ["text/plain", "text/html"]
    assert parts[1].get_filename() == "sales.csv"
    assert parts[1].get_payload(decode=True) == csv
    assert parts[2].get_payload(decode=True) == b"\x89PNG"


def test_compose_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="recipient"):
        compose(sender="a@b", recipients=[], subject="s", text="t", html="h", message_id="<x@y>")


def test_build_mailer_uses_smtp_when_configured(tmp_path: Path) -> None:
    smtp = build_mailer(Settings(smtp_url=SecretStr("smtp://u:p@mail:2525"), mail_dir=tmp_path))
    assert isinstance(smtp, SmtpMailer)
    assert smtp.endpoint == SmtpEndpoint("mail", 2525, "plain", "u", "p")
    files = build_mailer(Settings(mail_dir=tmp_path / "mail"))
    assert isinstance(files, FileMailer)
    assert files.directory == tmp_path / "mail"
