"""``shop doctor``: is this machine's configuration complete, and does everything answer?

One finding per check, each a plain line that says what is wrong and how to fix it:
the database, its migrations, the broker, a consumer on each task queue, the type of
every queue the shop owns, the SMTP server, the payment provider's key and the webhook
secret, the admin token. Every network check gives up after ``TIMEOUT`` seconds, so
the doctor never hangs on an address that drops packets.
URLs are shown with their password replaced by ``***``, and no secret is printed.

Errors from the database, the broker and SMTP stop here: each becomes a finding, and
the doctor carries on with the next check.

A task queue that nobody consumes is a problem even though everything answers: no
worker on ``reports`` means no daily report, ever, and nothing else says so. On
RabbitMQ a passive declare of each queue of ``QUEUES`` returns its consumer count, and
a declared queue with none fails, naming the queue. A queue not declared yet (nothing
has started) is a warning, so the doctor can run before the workers start. There is
no Prometheus alert for it in ``deploy/prometheus/alerts.yml``: the shop serves no
metric of queue consumers (a worker knows only its own queues), and the rules name
only metrics the shop serves. RabbitMQ's own Prometheus plugin exports
``rabbitmq_queue_consumers``, for whoever scrapes RabbitMQ too.

A queue whose type (or other argument) differs from what this release declares fails
too: ``SHOP_BROKER_QUEUE_TYPE=quorum`` on a deployment whose queues are still classic
would stop every worker at its first declare. The live arguments are read over AMQP
alone, so no management plugin is needed.
"""

from __future__ import annotations

import contextlib
import functools
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from kombu.connection import Connection
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from shop.config import Settings, redact_url
from shop.messaging import migration
from shop.messaging.broker import (
    DEAD_LETTER_EXCHANGE,
    DELIVERY_LIMIT,
    EVENTS,
    QUEUES,
    is_quorum,
    transport_options,
)
from shop.migrate import alembic_config
from shop.notifications.mailer import parse_smtp_url

TIMEOUT = 3.0  # seconds, for each connection the doctor opens
Status = Literal["ok", "warn", "skip", "FAIL"]


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one check: ``FAIL`` is a problem, ``warn`` fine on a laptop only."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix and self.status in ("FAIL", "warn") else ""
        return f"{self.status:<4}  {self.name}: {self.detail}{fix}"


def examine(settings: Settings) -> list[Finding]:
    """Every check, in order; a check that cannot run says why instead of raising."""
    secrets = _secrets(settings)
    findings: list[Finding] = []
    database = _guarded("database", lambda: check_database(settings), secrets)
    findings.append(database)
    if database.status == "FAIL":
        findings.append(Finding("migrations", "skip", "not checked: the database does not answer"))
    else:
        findings.append(_guarded("migrations", lambda: check_migrations(settings), secrets))
    broker = _guarded("broker", lambda: check_broker(settings), secrets)
    findings.append(broker)
    for name, check in (("queues", check_queues), ("queue types", check_queue_types)):
        findings.append(Finding(name, "skip", "not checked: the broker does not answer")
                        if broker.status == "FAIL"
                        else _guarded(name, functools.partial(check, settings), secrets))
    for name, check in (("smtp", check_smtp), ("payments", check_payments),
                        ("webhooks", check_webhooks), ("admin", check_admin)):
        findings.append(_guarded(name, functools.partial(check, settings), secrets))
    return findings


def summary(findings: list[Finding]) -> str:
    problems = [f.name for f in findings if f.status == "FAIL"]
    warnings = sum(f.status == "warn" for f in findings)
    if problems:
        return (f"shop doctor: {len(problems)} problem{'s' * (len(problems) > 1)} "
                f"({', '.join(problems)})")
    return f"shop doctor: all checks passed ({warnings} warning{'s' * (warnings != 1)})"


def _guarded(name: str, check: Callable[[], Finding], secrets: list[str]) -> Finding:
    try:
        finding = check()
    except Exception as exc:  # the doctor reports, it never stops with a traceback
        finding = Finding(name, "FAIL", f"the check itself failed: {_describe(exc)}")
    return Finding(finding.name, finding.status, _scrub(finding.detail, secrets),
                   _scrub(finding.fix, secrets))


def _describe(exc: BaseException) -> str:
    """An exception as one line: its type and first line of text."""
    words = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {words[0]}" if words else type(exc).__name__


def _secrets(settings: Settings) -> list[str]:
    values = [s.get_secret_value() for s in (settings.stripe_api_key,
              settings.stripe_webhook_secret, settings.admin_token) if s is not None]
    for url in (settings.database_url, settings.broker_url,
                settings.smtp_url.get_secret_value() if settings.smtp_url else ""):
        try:
            password = make_url(url).password if url else None
        except Exception:  # not a URL SQLAlchemy can read: nothing to hide from it
            password = None
        if password:
            values.append(str(password))
    return [v for v in values if len(v) >= 4]


def _scrub(text_: str, secrets: list[str]) -> str:
    for secret in secrets:
        text_ = text_.replace(secret, "***")
    return text_


# --- the database ------------------------------------------------------------------

def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return create_engine(parsed, poolclass=NullPool, connect_args={"timeout": TIMEOUT})
    return create_engine(parsed, poolclass=NullPool,
                         connect_args={"connect_timeout": int(TIMEOUT)})


def check_database(settings: Settings) -> Finding:
    """The database answers ``SELECT 1``; on PostgreSQL, its version and connection limit."""
    url = settings.database_url
    shown = redact_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path not in ("", ":memory:") and not Path(path).exists():
            return Finding("database", "FAIL", f"no SQLite database at {path}",
                           "run `shop migrate` (or set SHOP_DATABASE_URL)")
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if conn.dialect.name == "postgresql":
                version = str(conn.execute(text("SHOW server_version")).scalar_one())
                limit = str(conn.execute(text("SHOW max_connections")).scalar_one())
                return Finding("database", "ok",
                               f"PostgreSQL {version} at {shown} answers (max_connections "
                               f"{limit}; this process's pool {settings.db_pool_size}"
                               f"+{settings.db_max_overflow}, see docs/deployment.md)")
    except Exception as exc:
        return Finding("database", "FAIL", f"{shown} does not answer ({_describe(exc)})",
                       "start the database, or correct SHOP_DATABASE_URL")
    finally:
        engine.dispose()
    return Finding("database", "warn", f"SQLite at {shown} answers (one machine only)",
                   "use PostgreSQL in production (SHOP_DATABASE_URL=postgresql+psycopg://…)")


def check_migrations(settings: Settings) -> Finding:
    """The database's Alembic revision is the code's head."""
    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    engine = _engine(settings.database_url)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
    want = ", ".join(sorted(heads))
    if current == heads:
        return Finding("migrations", "ok", f"the schema is at head ({want})")
    if not current:
        return Finding("migrations", "FAIL", "the database has no schema yet",
                       "run `shop migrate`")
    unknown = {rev for rev in current if _unknown_revision(script, rev)}
    now = ", ".join(sorted(current))
    if unknown:
        return Finding("migrations", "FAIL",
                       f"the database is at {now}, which this code does not know (it was "
                       "migrated by a newer release)", "deploy that release's code")
    return Finding("migrations", "FAIL", f"the database is at {now}; this code needs {want}",
                   "run `shop migrate` (alembic upgrade head) before starting the new code")


def _unknown_revision(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is None
    except Exception:  # alembic raises for a revision id it has never seen
        return True


# --- the broker ----------------------------------------------------------------------

def check_broker(settings: Settings) -> Finding:
    """The broker accepts a connection (and, on RabbitMQ, the shop's exchanges exist)."""
    url = settings.broker_url
    shown = redact_url(url)
    if url.startswith("filesystem://"):
        transport_options(settings)  # creates its folders, as a worker would
        return Finding("broker", "warn",
                       f"the embedded filesystem broker at {shown} (one machine only)",
                       "use RabbitMQ in production (SHOP_BROKER_URL=amqp://…)")
    what = "RabbitMQ" if settings.broker_is_amqp else "the broker"
    try:
        with Connection(url, connect_timeout=TIMEOUT,
                        transport_options=transport_options(settings)) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=TIMEOUT)
            missing = _missing_exchanges(conn) if settings.broker_is_amqp else []
    except Exception as exc:
        return Finding("broker", "FAIL",
                       f"{what} at {shown} does not answer ({_describe(exc)})",
                       f"start {what} there, or correct SHOP_BROKER_URL "
                       "(user, password and vhost included)")
    if missing:
        return Finding("broker", "warn",
                       f"{what} at {shown} answers, but {', '.join(missing)} is not declared "
                       "yet", "start a worker (it declares them), or apply "
                       "deploy/rabbitmq/definitions.json (docs/deployment.md)")
    return Finding("broker", "ok", f"{what} at {shown} answers")


def _missing_exchanges(conn: Connection) -> list[str]:
    """The shop's own exchanges that this vhost does not have yet (passive declares)."""
    missing = []
    for exchange in (DEAD_LETTER_EXCHANGE, EVENTS):
        channel = conn.channel()
        try:
            channel.exchange_declare(exchange.name, exchange.type, passive=True)
        except Exception as exc:
            if getattr(exc, "code", None) != 404:  # AMQP's NOT_FOUND
                raise
            missing.append(exchange.name)
        finally:
            with contextlib.suppress(Exception):  # the broker closed it already (404)
                channel.close()
    return missing


def check_queues(settings: Settings) -> Finding:
    """Every task queue has a consumer (RabbitMQ only: the embedded brokers cannot say)."""
    if not settings.broker_is_amqp:
        return Finding("queues", "skip", "only RabbitMQ says who consumes a queue")
    with Connection(settings.broker_url, connect_timeout=TIMEOUT,
                    transport_options=transport_options(settings)) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=TIMEOUT)
        consumers = {name: _consumers(conn, name) for name in QUEUES}
    idle = [name for name, count in consumers.items() if count == 0]
    undeclared = [name for name, count in consumers.items() if count is None]
    not_yet = (f"; {', '.join(undeclared)} not declared yet" if undeclared else "")
    if idle:
        their = "its" if len(idle) == 1 else "their"
        return Finding("queues", "FAIL", f"no worker consumes {', '.join(idle)}: {their} "
                       f"tasks wait forever{not_yet}",
                       f"start a worker that consumes {' and '.join(idle)} (celery -A shop "
                       f"worker -Q {','.join(idle)}; docs/deployment.md)")
    if undeclared:
        return Finding("queues", "warn", f"{', '.join(undeclared)} not declared yet: no "
                       "worker consuming it has started", "start the workers (every queue "
                       f"of {', '.join(QUEUES)} needs one)")
    counts = ", ".join(f"{name} {count}" for name, count in consumers.items())
    return Finding("queues", "ok", f"every task queue has a consumer ({counts})")


def check_queue_types(settings: Settings) -> Finding:
    """Every queue the shop owns has the type ``SHOP_BROKER_QUEUE_TYPE`` says, and the
    arguments this release declares (RabbitMQ only; read over AMQP, see
    ``shop.messaging.migration.live_arguments``): a worker could not declare it else."""
    if not settings.broker_is_amqp:
        return Finding("queue types", "skip", "the embedded broker has no queue types")
    with Connection(settings.broker_url, connect_timeout=TIMEOUT,
                    transport_options=transport_options(settings)) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=TIMEOUT)
        found = migration.plan(conn, settings)
    want = settings.broker_queue_type
    wrong = [f"{queue.name} is {migration.describe(live, queue)}" for queue, live in found
             if live is not None and migration.arguments_differ(live, queue)]
    if wrong:
        return Finding("queue types", "FAIL", f"{'; '.join(wrong)} (SHOP_BROKER_QUEUE_TYPE="
                       f"{want}): workers and relays cannot declare them",
                       "stop the workers, relays and beat, then run `shop broker "
                       "migrate-queues` (docs/deployment.md, \"Queue types\"); or set "
                       "SHOP_BROKER_QUEUE_TYPE to the queues' type")
    if is_quorum(settings) and settings.max_deliveries >= DELIVERY_LIMIT:
        return Finding("queue types", "warn", f"SHOP_MAX_DELIVERIES ({settings.max_deliveries}"
                       f") is not below the quorum queues' delivery limit ({DELIVERY_LIMIT}): "
                       "RabbitMQ dead-letters a message before the shop gives its order up",
                       f"set SHOP_MAX_DELIVERIES below {DELIVERY_LIMIT}")
    missing = sum(live is None for _, live in found)
    later = f"; {missing} not declared yet" if missing else ""
    return Finding("queue types", "ok", f"every declared queue is a {want} queue with the "
                   f"arguments this release declares ({len(found) - missing} of {len(found)}"
                   f"{later})")


def _consumers(conn: Connection, queue: str) -> int | None:
    """How many consumers ``queue`` has, or None when it is not declared (passive)."""
    channel = conn.channel()
    try:
        return int(channel.queue_declare(queue, passive=True).consumer_count)
    except Exception as exc:
        if getattr(exc, "code", None) != 404:  # AMQP's NOT_FOUND
            raise
        return None
    finally:
        with contextlib.suppress(Exception):  # the broker closed it already (404)
            channel.close()


# --- SMTP ----------------------------------------------------------------------------

def check_smtp(settings: Settings) -> Finding:
    """The SMTP server greets us, takes STARTTLS and the login when asked to."""
    if settings.smtp_url is None:
        return Finding("smtp", "warn", f"no SHOP_SMTP_URL: emails are written as .eml files "
                       f"under {settings.mail_path}", "set SHOP_SMTP_URL=smtp://user:pass@host:587"
                       "?starttls=1")
    try:
        endpoint = parse_smtp_url(settings.smtp_url.get_secret_value())
    except ValueError as exc:
        return Finding("smtp", "FAIL", f"SHOP_SMTP_URL is not usable: {exc}",
                       "write it as smtp://[user:pass@]host:port (smtps:// or ?starttls=1 "
                       "for TLS)")
    where = f"{endpoint.host}:{endpoint.port} ({endpoint.security})"
    try:
        _greet(endpoint.host, endpoint.port, endpoint.security, endpoint.username,
               endpoint.password)
    except smtplib.SMTPAuthenticationError as exc:
        return Finding("smtp", "FAIL", f"the SMTP server at {where} refused the login "
                       f"({exc.smtp_code})", "correct the user and password in SHOP_SMTP_URL")
    except Exception as exc:
        return Finding("smtp", "FAIL", f"the SMTP server at {where} does not answer "
                       f"({_describe(exc)})", "start it, or correct SHOP_SMTP_URL")
    login = f", logged in as {endpoint.username}" if endpoint.username else ""
    return Finding("smtp", "ok", f"the SMTP server at {where} answers{login}")


def _greet(host: str, port: int, security: str, user: str | None, password: str | None) -> None:
    context = ssl.create_default_context()
    smtp = (smtplib.SMTP_SSL(host, port, timeout=TIMEOUT, context=context)
            if security == "ssl" else smtplib.SMTP(host, port, timeout=TIMEOUT))
    try:
        smtp.ehlo()
        if security == "starttls":
            smtp.starttls(context=context)
            smtp.ehlo()
        if user is not None:
            smtp.login(user, password or "")
        smtp.noop()
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


# --- payments, webhooks, admin -------------------------------------------------------

def check_payments(settings: Settings) -> Finding:
    """Which provider is in force, and in which mode its key is (never the key itself)."""
    key = settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None
    if settings.provider == "dummy":
        why = ("SHOP_PAYMENT_PROVIDER=dummy" if key else "no SHOP_STRIPE_API_KEY")
        return Finding("payments", "warn", f"the dummy provider ({why}): no money moves",
                       "set SHOP_STRIPE_API_KEY (and unset SHOP_PAYMENT_PROVIDER) to take "
                       "payments")
    if key is None:
        return Finding("payments", "FAIL", "SHOP_PAYMENT_PROVIDER=stripe, but SHOP_STRIPE_API_KEY"
                       " is not set", "set SHOP_STRIPE_API_KEY to the account's secret key")
    mode = _key_mode(key)
    if mode is None:
        kind = "a publishable key" if key.startswith("pk_") else "not a Stripe secret key"
        return Finding("payments", "FAIL", f"SHOP_STRIPE_API_KEY is {kind}",
                       "use the secret key (sk_live_… or sk_test_…, or a restricted rk_…)")
    if mode == "live" and settings.payment_faults is not None:
        return Finding("payments", "FAIL", "a live Stripe key with SHOP_PAYMENT_FAULTS set: "
                       "payment calls would fail on purpose", "unset SHOP_PAYMENT_FAULTS")
    base = f", API at {settings.stripe_api_base}" if settings.stripe_api_base else ""
    account, endpoint = settings.provider_limits or (0.0, 0.0)
    return Finding("payments", "ok", f"Stripe in {mode} mode{base}, at most {account:g} "
                   f"requests/s (each endpoint {endpoint:g}) for the whole deployment")


def _key_mode(key: str) -> Literal["live", "test"] | None:
    for mode in ("live", "test"):
        if key.startswith((f"sk_{mode}_", f"rk_{mode}_")):
            return mode
    return None


def check_webhooks(settings: Settings) -> Finding:
    """With Stripe, a webhook secret (or two, during a rotation) that looks like one."""
    if settings.provider != "stripe":
        return Finding("webhooks", "skip", "not used with the dummy provider")
    found = settings.webhook_secrets
    if not found:
        return Finding("webhooks", "FAIL", "SHOP_STRIPE_WEBHOOK_SECRET is not set: POST "
                       "/webhooks/stripe answers 503, so 3-D Secure payments never resume",
                       "set it to the endpoint's signing secret (whsec_…) from Stripe")
    odd = sum(not s.startswith("whsec_") for s in found)
    if odd:
        return Finding("webhooks", "warn", f"{odd} of {len(found)} webhook secrets do not start "
                       "with whsec_", "copy the endpoint's signing secret from Stripe")
    return Finding("webhooks", "ok", f"{len(found)} webhook signing secret"
                   f"{'s' * (len(found) > 1)} set")


def check_admin(settings: Settings) -> Finding:
    if settings.admin_token is None:
        return Finding("admin", "warn", "SHOP_ADMIN_TOKEN is not set: /admin answers 503",
                       "set it to 16 characters or more (python -c 'import secrets; "
                       "print(secrets.token_urlsafe(24))')")
    return Finding("admin", "ok", "SHOP_ADMIN_TOKEN is set")

