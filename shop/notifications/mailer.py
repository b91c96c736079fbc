"""Sending email: an SMTP backend, a ``.eml`` file backend, and their errors.

SMTP and file-system errors become ours here::

    MailError
    ├── MailTransientError   connection refused or reset, timeouts, DNS, SMTP 4xx,
    │                        server disconnected, a full disk: retry later
    └── MailPermanentError   SMTP 5xx (bad credentials, sender or every recipient
                             refused), TLS misconfiguration: retrying will not help
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import os
import re
import smtplib
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from shop.config import Settings
from shop.exceptions import PermanentError, TransientError

log = logging.getLogger(__name__)

Security = Literal["plain", "ssl", "starttls"]

_DEFAULT_PORTS: dict[str, int] = {"plain": 25, "ssl": 465, "starttls": 587}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class MailError(Exception):
    """Base of every error raised while sending an email."""


class MailTransientError(MailError, TransientError):
    """Worth retrying: the mail server may accept the message later."""


class MailPermanentError(MailError, PermanentError):
    """The message was refused for a reason retrying will not fix."""


class Mailer(Protocol):
    """Something that delivers a composed email or raises a ``MailError``."""

    def send(self, message: EmailMessage) -> None: ...


@dataclass(frozen=True, slots=True)
class SmtpEndpoint:
    """Where and how to reach the SMTP server, parsed from ``SHOP_SMTP_URL``."""

    host: str
    port: int
    security: Security = "plain"
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_smtp_url(url: str) -> SmtpEndpoint:
    """Parse ``smtp[s]://[user:pass@]host[:port][?starttls=1]`` (credentials URL-decoded)."""
    # Messages never quote the URL: it may carry a password.
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("SMTP URL must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("SMTP URL has no host")
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(options) - {"starttls"}
    if unknown:
        raise ValueError(f"unknown SMTP URL option(s): {', '.join(sorted(unknown))}")
    starttls = _flag(options.get("starttls", ["0"])[-1])
    if starttls and parts.scheme == "smtps":
        raise ValueError("smtps:// already uses TLS; drop ?starttls=1")
    security: Security = "ssl" if parts.scheme == "smtps" else "starttls" if starttls else "plain"
    try:
        explicit_port = parts.port
    except ValueError:
        raise ValueError("SMTP URL has an invalid port") from None
    return SmtpEndpoint(
        host=parts.hostname,
        port=explicit_port or _DEFAULT_PORTS[security],
        security=security,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("starttls must be 1 or 0")


class SmtpMailer:
    """Sends through an SMTP server, one connection per message."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        self.endpoint = parse_smtp_url(url)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SmtpMailer({self.endpoint!r})"

    def send(self, message: EmailMessage) -> None:
        """Deliver ``message`` to its recipients; raise a ``MailError`` if that fails."""
        try:
            smtp = self._connect()
            try:
                refused = self._deliver(smtp, message)
            finally:
                _close_quietly(smtp)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            error = MailTransientError if all(400 <= c < 500 for c in codes) else MailPermanentError
            raise error(f"every recipient refused: {_describe_refusals(exc.recipients)}") from exc
        except smtplib.SMTPResponseException as exc:
            error = MailPermanentError if exc.smtp_code >= 500 else MailTransientError
            raise error(f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}") from exc
        except smtplib.SMTPServerDisconnected as exc:
            raise MailTransientError(f"SMTP server disconnected: {exc}") from exc
        except smtplib.SMTPException as exc:  # e.g. STARTTLS or AUTH not supported
            raise MailPermanentError(f"SMTP: {exc}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise MailPermanentError(f"TLS certificate refused: {exc}") from exc
        except OSError as exc:  # refused, reset, timeouts, DNS, other TLS errors
            raise MailTransientError(f"cannot reach SMTP server: {exc!r}") from exc
        if refused:  # delivered to the others: raising would make a retry send twice
            log.warning("some recipients refused: %s", _describe_refusals(refused))

    def _connect(self) -> smtplib.SMTP:
        endpoint = self.endpoint
        if endpoint.security == "ssl":
            return smtplib.SMTP_SSL(
                endpoint.host, endpoint.port, timeout=self.timeout,
                context=ssl.create_default_context(),
            )
        return smtplib.SMTP(endpoint.host, endpoint.port, timeout=self.timeout)

    def _deliver(
        self, smtp: smtplib.SMTP, message: EmailMessage
    ) -> dict[str, tuple[int, bytes]]:
        endpoint = self.endpoint
        if endpoint.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if endpoint.username is not None:
            smtp.login(endpoint.username, endpoint.password or "")
        return smtp.send_message(message)


def _close_quietly(smtp: smtplib.SMTP) -> None:
    """QUIT after the message is accepted; a failure here must not fail the send."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _describe_refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{rcpt}: {code} {_text(msg)}" for rcpt, (code, msg) in refused.items())


class FileMailer:
    """Writes each message as ``<Message-ID>.eml`` in a directory, once."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"FileMailer({str(self.directory)!r})"

    def path_for(self, message: EmailMessage) -> Path:
        """The file a message is written to, named from its Message-ID."""
        message_id = message["Message-ID"]
        if not message_id:
            raise ValueError("FileMailer needs a Message-ID to name the file")
        name = re.sub(r"[^A-Za-z0-9@._+-]", "_", str(message_id).strip().strip("<>"))
        return self.directory / f"{name.lstrip('.') or '_'}.eml"

    def send(self, message: EmailMessage) -> None:
        """Write the message atomically; a file already there means it was written."""
        target = self.path_for(message)
        if target.exists():
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".eml")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(message.as_bytes())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise MailTransientError(f"cannot write {target}: {exc}") from exc


def build_mailer(settings: Settings) -> Mailer:
    """SMTP when ``SHOP_SMTP_URL`` is set, else ``.eml`` files under ``mail_dir``."""
    if settings.smtp_url is not None and settings.smtp_url.get_secret_value():
        return SmtpMailer(settings.smtp_url.get_secret_value())
    return FileMailer(settings.mail_path)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file sent with an email, e.g. ``Attachment("sales.csv", data, "text/csv")``."""

    filename: str
    content: bytes = field(repr=False)
    mime_type: str = "application/octet-stream"


def compose(
    *, sender: str, recipients: list[str], subject: str, text: str, html: str, message_id: str,
    attachments: Sequence[Attachment] = (),
) -> EmailMessage:
    """A multipart/alternative email (text, then HTML) with a UTC Date and the given id.

    With ``attachments`` it becomes multipart/mixed: the alternatives first, then each
    file, base64-encoded and named (text files are UTF-8).
    """
    if not recipients:
        raise ValueError("an email needs at least one recipient")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = message_id
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    for attachment in attachments:
        maintype, _, subtype = attachment.mime_type.partition("/")
        message.add_attachment(attachment.content, maintype=maintype,
                               subtype=subtype or "octet-stream", filename=attachment.filename,
                               params={"charset": "utf-8"} if maintype == "text" else None)
    return message
