"""The state-machine test's only door into the shop: every import of shop's internals is
here, so when modules move (issue 18 runs alongside the restructuring of shop/orders/)
only this file changes.

``World`` is one shop on a fresh database (SQLite by default; PostgreSQL with
``SHOP_STATEMACHINE_DB=postgres``) and everything around it, driven the way production
drives it, one action at a time, without Celery:

- a broker: task messages the relay (``relay_batch``) takes from the outbox, delivered
  in any order, again and again, and run the way ``shop.messaging.runner.run_step`` and the
  task bodies of ``shop/orders/tasks.py`` run them (a transient error leaves the message
  pending, counted; a busy order or a 429 retries uncounted; a permanent error, or
  ``retry_max_attempts`` failures, calls the task's give-up);
- the dummy payment provider (``shop.payments.dummy``), in-process, behind
  ``SimProvider``: faults for the next call of an operation (an outage, a lost answer,
  a 429, a refusal, a worker killed right after the call took effect), the webhook
  events Stripe would send when an intent changes, the captures that took effect, and
  what the customer and Stripe itself do (3-D Secure, authorizations lapsing at 7 days);
- a mail server that can answer 4xx or 5xx;
- a clock (``CLOCK``) that ``shop`` reads through every ``utcnow`` (the database's own
  clock, ``db_now``, is left alone: leases run out when ``expire_leases`` moves their
  end into the past);
- the beat jobs (sweeper, reconciliation, 3-D Secure expiry) and the admin actions;
- the warehouse (issue 22): it reads the fulfillment requests the relay publishes and
  answers on its own queue (``warehouse_answers``: parcels, lines it cannot ship, maybe
  with a shelf count, and each parcel's delivery), which the shop consumes in any order
  and maybe twice (``warehouse_delivers``), as ``shop.orders.fulfillment.consumer`` does.

What it reads back for the checks is plain data (``Snapshot``), not shop's models.
A "worker killed" is ``WorkerKilled``, a ``BaseException``: shop's ``finally`` blocks
still run (they give leases back), so the driver puts back the leases that were held when
the worker died, as a SIGKILL would have left them.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

import shop.db
import shop.models  # (registers every table)
from shop.config import get_settings
from shop.db import Base, build_engine, db_now
from shop.exceptions import BusyError, PermanentError, SlowDown, TransientError
from shop.messaging.broker import FULFILLMENT_ROUTING_KEY
from shop.messaging.models import OutboxMessage
from shop.messaging.service import count_delivery, delivery_count, mark_consumed, relay_batch
from shop.notifications.mailer import MailPermanentError, MailTransientError
from shop.notifications.models import Notification
from shop.notifications.service import message_id_for
from shop.orders import service
from shop.orders.admin import service as admin_service
from shop.orders.fulfillment import emails as fulfillment_emails
from shop.orders.fulfillment import service as fulfillment
from shop.orders.fulfillment.messages import CANNOT_FULFIL, DELIVERED, SHIPPED
from shop.orders.fulfillment.messages import parse as parse_warehouse_message
from shop.orders.fulfillment.models import Shipment, ShipmentLine, UnfulfilledLine
from shop.orders.models import Attention, FulfillmentRequest, Order, OrderEvent, OrderLine, Product
from shop.orders.provider import converge, reconcile
from shop.orders.provider import events as payment_events
from shop.orders.queries import OrderNotFound
from shop.orders.refunds import service as refunds
from shop.orders.refunds.models import (
    RefundRequest,
    RefundRequestLine,
    RefundSource,
    RefundStatus,
)
from shop.orders.schemas import OrderIn, ProductIn
from shop.orders.workflow import giving_up, steps, sweeper
from shop.orders.workflow.table import TaskName
from shop.payments import dummy
from shop.payments.dummy import DummyGateway
from shop.payments.gateway import (
    IntentState,
    IntentStatus,
    PaymentDeclined,
    PaymentError,
    PaymentProviderError,
    PaymentRateLimited,
    PaymentTransientError,
    ProviderEvent,
    RefundState,
)
from shop.payments.models import Payment, Refund, WebhookEvent

T = TypeVar("T")

# --- the catalogue, the baskets and the cards the machine chooses from ------------------

PRODUCTS: dict[str, tuple[int, int]] = {"MUG": (1500, 2), "TEE": (2500, 3)}  # price, stock
BASKETS: list[dict[str, int]] = [
    {"MUG": 1}, {"TEE": 2}, {"MUG": 2}, {"MUG": 1, "TEE": 1}, {"TEE": 3}]
PAYMENT_METHODS: list[str] = [
    "pm_card_visa",  # authorizes
    "pm_card_authenticationRequired",  # 3-D Secure first
    "pm_card_chargeDeclined",  # declined at confirmation
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds",  # 3-D Secure, then declined
]
MAX_ORDERS = 5
MAX_IN_FLIGHT = 3

PROVIDER_OPS = ("*", "create_intent", "retrieve", "confirm", "capture", "cancel", "refund",
                "list_intents")
PROVIDER_FAULTS = ("lost_answer", "outage", "rate_limited", "refusal", "crash")
SMTP_FAULTS = ("4xx", "5xx")
AUTHORIZATION_LAPSES = dt.timedelta(days=7)  # Stripe cancels an uncaptured intent then
DEAD_LEASE_SECONDS = 86_400.0  # a dead worker's lease: until ``expire_leases``
EXPIRED_CLAIM_SECONDS = 86_400.0  # how far back ``expire_leases`` puts email claims

IN_FLIGHT_STAGES = ("placed", "in_stock", "requires_action", "authorized", "reserved")
WAREHOUSE_PLANS = ("ship all", "ship one", "split in two", "cannot ship one line",
                   "cannot ship any")


# --- the clock --------------------------------------------------------------------------

_REAL_UTCNOW = shop.db.utcnow


class Clock:
    """The application's clock: real time plus ``offset`` (moved by ``advance``)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return _REAL_UTCNOW() + self.offset

    def time(self) -> float:  # what the dummy provider reads as ``time.time()``
        return self.now().timestamp()

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)


CLOCK = Clock()


@contextlib.contextmanager
def virtual_clock() -> Iterator[Clock]:
    """Make every ``shop`` module read ``CLOCK`` for ``utcnow`` (and the dummy provider
    for ``time.time``) until the block ends."""
    patched: list[tuple[object, str, object]] = []
    for name, module in list(sys.modules.items()):
        if (name == "shop" or name.startswith("shop.")) and \
                getattr(module, "utcnow", None) is _REAL_UTCNOW:
            patched.append((module, "utcnow", _REAL_UTCNOW))
            setattr(module, "utcnow", CLOCK.now)  # noqa: B010
    patched.append((dummy, "time", vars(dummy)["time"]))
    setattr(dummy, "time", CLOCK)  # noqa: B010
    try:
        yield CLOCK
    finally:
        for target, attribute, original in reversed(patched):
            setattr(target, attribute, original)
        CLOCK.offset = dt.timedelta(0)


# --- the provider -----------------------------------------------------------------------

class WorkerKilled(BaseException):
    """The worker process died right after a call took effect (SIGKILL)."""


_EVENT_OF_STATUS: dict[IntentStatus, str] = {
    IntentStatus.REQUIRES_ACTION: "payment_intent.requires_action",
    IntentStatus.REQUIRES_CAPTURE: "payment_intent.amount_capturable_updated",
    IntentStatus.SUCCEEDED: "payment_intent.succeeded",
    IntentStatus.REQUIRES_PAYMENT_METHOD: "payment_intent.payment_failed",
    IntentStatus.CANCELED: "payment_intent.canceled",
}


class SimProvider:
    """The dummy provider (``DummyGateway``) as a ``PaymentGateway`` with faults, events
    and a record of the captures that took effect."""

    name = "dummy"

    def __init__(self, state_dir: Path, on_crash: Callable[[], None],
                 meanwhile: Callable[[Action], None]) -> None:
        self.inner = DummyGateway(state_dir=state_dir)
        self.on_crash = on_crash
        self.meanwhile = meanwhile
        self.faults: list[Fault] = []  # the first that matches a call is used
        self.nested = 0  # > 0 while another actor acts in the middle of a call
        self.events: list[ProviderEvent] = []
        self.references: list[str] = []  # every intent, in creation order
        self.captures: Counter[str] = Counter()  # captures that took effect, per intent
        self.captured_amounts: dict[str, list[int]] = {}
        self.authorized_at: dict[str, dt.datetime] = {}
        self.refunded_outside: Counter[str] = Counter()  # by hand, in the dashboard
        self.refunds_by_key: dict[str, list[int]] = {}  # the shop's refunds that took effect
        self.calls: Counter[str] = Counter()

    # The PaymentGateway protocol.
    def create_intent(self, *, amount: int, currency: str, payment_method: str,
                      metadata: dict[str, str], idempotency_key: str,
                      confirm: bool = False) -> IntentState:
        return self._call("create_intent", None, lambda: self.inner.create_intent(
            amount=amount, currency=currency, payment_method=payment_method,
            metadata=metadata, idempotency_key=idempotency_key, confirm=confirm))

    def retrieve(self, reference: str) -> IntentState:
        return self._call("retrieve", reference, lambda: self.inner.retrieve(reference))

    def confirm(self, reference: str, *, idempotency_key: str) -> IntentState:
        return self._call("confirm", reference, lambda: self.inner.confirm(
            reference, idempotency_key=idempotency_key))

    def capture(self, reference: str, *, amount: int, idempotency_key: str) -> IntentState:
        return self._call("capture", reference, lambda: self.inner.capture(
            reference, amount=amount, idempotency_key=idempotency_key))

    def cancel(self, reference: str, *, idempotency_key: str) -> IntentState:
        return self._call("cancel", reference, lambda: self.inner.cancel(
            reference, idempotency_key=idempotency_key))

    def refund(self, reference: str, *, amount: int, idempotency_key: str) -> RefundState:
        def call() -> RefundState:
            before = self.inner.retrieve(reference).amount_refunded
            done = self.inner.refund(reference, amount=amount, idempotency_key=idempotency_key)
            if self.inner.retrieve(reference).amount_refunded > before:  # not a replay
                self.refunds_by_key.setdefault(idempotency_key, []).append(amount)
            return done

        return self._call("refund", reference, call)

    def list_intents(self, *, created_after: int) -> Iterator[IntentState]:
        found = self._call("list_intents", None, lambda: sorted(
            self.inner.list_intents(created_after=created_after),
            key=lambda state: self._position(state.reference)))
        return iter(found)

    # What the customer and the provider do on their own.
    def waiting_for_customer(self) -> list[str]:
        return [ref for ref in self.references
                if self.inner.retrieve(ref).status is IntentStatus.REQUIRES_ACTION]

    def customer_authenticates(self, reference: str, *, success: bool) -> None:
        before = self._peek(reference)
        with contextlib.suppress(PaymentProviderError):
            self.inner.complete_authentication(reference, success=success)
        self._observe(reference, before)

    def lapse_authorizations(self, now: dt.datetime) -> int:
        """Stripe cancels an authorization nobody captured within 7 days."""
        lapsed = 0
        for ref in self.references:
            before = self._peek(ref)
            if before is not None and before.status is IntentStatus.REQUIRES_CAPTURE and \
                    self.authorized_at[ref] <= now - AUTHORIZATION_LAPSES:
                self.inner.cancel(ref, idempotency_key=f"lapsed:{ref}")
                self._observe(ref, before)
                lapsed += 1
        return lapsed

    def merchant_refunds(self, pick: int, *, whole: bool) -> str | None:
        """Someone refunds a captured intent in the provider's dashboard (half, or all
        that is left), outside the shop: the shop hears of it by webhook only."""
        kept = [ref for ref in self.references if self._kept(ref) > 0]
        if not kept:
            return None
        reference = kept[pick % len(kept)]
        left = self._kept(reference)
        amount = left if whole else max(1, left // 2)
        before = self._peek(reference)
        self.inner.refund(reference, amount=amount,
                          idempotency_key=f"dashboard:{reference}:{len(self.events)}")
        self._observe(reference, before)
        self.refunded_outside[reference] += amount
        return reference

    def _kept(self, reference: str) -> int:
        state = self.inner.retrieve(reference)
        if state.status is not IntentStatus.SUCCEEDED:
            return 0
        return state.amount_received - state.amount_refunded

    def state(self, reference: str) -> IntentState:
        return self.inner.retrieve(reference)

    # Faults, observation, events.
    def _take(self, op: str) -> tuple[str | None, Action | None]:
        for fault in self.faults:
            if fault.op in ("*", op) and not (fault.mode == "meanwhile" and self.nested):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault.mode, fault.action
        return None, None

    def _call(self, op: str, reference: str | None, call: Callable[[], T]) -> T:
        self.calls[op] += 1
        mode, action = self._take(op)
        if mode == "outage":
            raise PaymentTransientError(f"injected: {op} never reached the provider")
        if mode == "rate_limited":
            raise PaymentRateLimited(f"injected: 429 on {op}", retry_after=1.0)
        if mode == "refusal":
            raise PaymentProviderError(f"injected: the provider refused {op}")
        before = self._peek(reference)
        try:
            result = call()
        except PaymentError as exc:
            if isinstance(exc, PaymentDeclined) and exc.reference is not None:
                reference = exc.reference  # a confirming create declined on this intent
            self._observe(reference, before)
            self._after(op, mode, exc)
            raise
        if isinstance(result, IntentState):
            reference = result.reference
        self._observe(reference, before)
        if action is not None:  # the call took effect; its answer is still on its way
            self.meanwhile(action)
        self._after(op, mode, None)
        return result

    def _after(self, op: str, mode: str | None, error: Exception | None) -> None:
        if mode == "lost_answer":
            raise PaymentTransientError(f"injected: the answer to {op} was lost") from error
        if mode == "crash":
            self.on_crash()
            raise WorkerKilled(f"the worker died after {op}")

    def _position(self, reference: str) -> int:
        return self.references.index(reference) if reference in self.references else 1 << 30

    def _peek(self, reference: str | None) -> IntentState | None:
        if reference is None:
            return None
        try:
            return self.inner.retrieve(reference)
        except PaymentProviderError:
            return None

    def _observe(self, reference: str | None, before: IntentState | None) -> None:
        after = self._peek(reference)
        if after is None or reference is None:
            return
        if reference not in self.references:
            self.references.append(reference)
            self._emit("payment_intent.created", after)
        old = before.status if before is not None else None
        if after.status is not old and after.status in _EVENT_OF_STATUS:
            self._emit(_EVENT_OF_STATUS[after.status], after)
        if after.status is IntentStatus.REQUIRES_CAPTURE and old is not after.status:
            self.authorized_at[reference] = CLOCK.now()
        if old is IntentStatus.REQUIRES_CAPTURE and after.status is IntentStatus.SUCCEEDED:
            self.captures[reference] += 1
            self.captured_amounts.setdefault(reference, []).append(after.amount_received)
        if before is not None and after.amount_refunded > before.amount_refunded:
            self._emit("charge.refunded", after)

    def _emit(self, type_: str, state: IntentState) -> None:
        event_id = f"evt_sim_{len(self.events):04d}"
        if type_.startswith("charge."):
            obj: dict[str, Any] = {
                "id": f"ch_{state.reference}", "object": "charge",
                "payment_intent": state.reference, "amount": state.amount_received,
                "amount_refunded": state.amount_refunded, "metadata": dict(state.metadata)}
        else:
            obj = {"id": state.reference, "object": "payment_intent",
                   "status": state.status.value, "amount": state.amount,
                   "metadata": dict(state.metadata)}
        created = int(CLOCK.time())
        self.events.append(ProviderEvent(id=event_id, type=type_, created=created, payload={
            "id": event_id, "object": "event", "type": type_, "created": created,
            "data": {"object": obj}}))


Action = tuple[str, int]  # (one of ACTIONS, which order, message or event)


@dataclass(eq=False)
class Fault:
    op: str  # a gateway operation, or "*" for any
    mode: str  # one of PROVIDER_FAULTS, or "meanwhile"
    times: int  # how many calls it takes
    action: Action | None = None  # for "meanwhile": what another actor does
ACTIONS = ("deliver", "webhook", "admin retry", "admin cancel", "admin resend email",
           "sweep", "reconcile", "expire_authentications", "expire_leases",
           "customer passes", "customer fails", "admin refund")


# --- the mail server --------------------------------------------------------------------

class FakeMailer:
    """An SMTP server that accepts every message, unless told to answer 4xx or 5xx next."""

    def __init__(self) -> None:
        self.faults: list[list[Any]] = []  # [kind, how many sends]
        self.sent: list[str] = []  # Message-IDs, in order

    def send(self, message: EmailMessage) -> None:
        if self.faults:
            fault = self.faults[0][0]
            self.faults[0][1] -= 1
            if self.faults[0][1] <= 0:
                self.faults.pop(0)
            if fault == "4xx":
                raise MailTransientError("SMTP 451: try again later (injected)")
            raise MailPermanentError("SMTP 550: mailbox unavailable (injected)")
        self.sent.append(str(message["Message-ID"]))


# --- what the checks read ---------------------------------------------------------------

@dataclass(frozen=True)
class OrderRow:
    id: uuid.UUID
    index: int  # in the order the machine placed them
    stage: str
    status: str
    total: int
    attempt: int
    stock_reserved: bool
    lines: tuple[tuple[str, int], ...]
    open_flags: frozenset[str]
    email_ledger_sent: bool  # the notification ledger says sent
    emails_delivered: int  # messages the mail server accepted for it
    email_left_to_sweeper: bool  # its email task once gave up on a 4xx
    in_admin_view: bool  # listed by status (pending, requires_action) or as needing attention
    outstanding: tuple[tuple[str, int], ...] = ()  # units neither shipped nor given up
    fulfillment: str | None = None  # fulfillment.status
    shop_refunded: int = 0  # line refunds (admin or warehouse) the provider made
    warehouse_refunds_asked: int = 0  # the warehouse's line refunds, asked for
    unfulfilled_to_refund: int = 0  # what the lines the warehouse cannot ship cost
    shipment_emails: tuple[tuple[str, bool, int], ...] = ()  # (shipment, ledger sent, delivered)
    line_refund_emails: tuple[tuple[str, bool, int], ...] = ()  # (message, ledger sent, delivered)


@dataclass(frozen=True)
class ProductRow:
    sku: str
    on_hand: int
    reserved: int
    stocked: int = 0  # what the catalogue started with
    shipped: int = 0  # units in the shop's shipments
    corrected: int = 0  # on_hand moved by the warehouse's shelf counts (to - from)


@dataclass(frozen=True)
class PaymentRow:
    order_id: uuid.UUID
    attempt: int
    reference: str | None
    status: str
    amount: int
    amount_captured: int
    amount_refunded: int


@dataclass(frozen=True)
class IntentRow:
    reference: str
    order_id: str
    attempt: str
    status: str
    amount: int
    amount_received: int
    amount_refunded: int
    captures: int  # captures that took effect
    captured_amounts: tuple[int, ...]
    refunded_outside: int  # refunded by hand in the provider's dashboard


@dataclass(frozen=True)
class RefundRow:
    """One line-refund request, with its lines ``(sku, quantity, restock, restocked)``."""

    order_id: uuid.UUID
    status: str
    amount: int
    payment_reference: str | None
    provider_key: str  # the idempotency key it is sent with
    lines: tuple[tuple[str, int, bool, bool], ...]


@dataclass(frozen=True)
class LedgerRefundRow:
    """A ``refunds`` row: money the ledger says went back (line refunds and the rest)."""

    payment_reference: str | None
    amount: int
    reason: str


@dataclass(frozen=True)
class Snapshot:
    orders: tuple[OrderRow, ...]
    products: tuple[ProductRow, ...]
    payments: tuple[PaymentRow, ...]
    intents: tuple[IntentRow, ...]
    unexpected: tuple[str, ...]  # exceptions outside the runtime's classes
    pending_messages: int
    unhandled_events: int
    undrained: tuple[str, ...]  # what the settle could not deliver
    dead_letters: tuple[tuple[str, str], ...] = ()  # warehouse messages refused: (order, why)
    refunds: tuple[RefundRow, ...] = ()
    ledger_refunds: tuple[LedgerRefundRow, ...] = ()
    refund_pending: tuple[tuple[str | None, int], ...] = ()  # (reference, reserved amount)
    line_refunded: tuple[tuple[uuid.UUID, str, int], ...] = ()  # (order, sku, units)
    initial_stock: tuple[tuple[str, int], ...] = ()
    shipped: tuple[tuple[str, int], ...] = ()  # units that left the shelf (the warehouse)
    shop_refunds_by_key: tuple[tuple[str, tuple[int, ...]], ...] = ()


# --- the broker -------------------------------------------------------------------------

@dataclass(eq=False)
class Message:
    id: str
    name: str
    kwargs: dict[str, Any]
    retries: int = 0
    redelivered: bool = False


_TASK_RANK = {name.value: rank for rank, name in enumerate(TaskName)}
Work = Callable[[Session], object]
EXPECTED_FAILURES = (BusyError, StaleDataError, TransientError, PermanentError,
                     OperationalError)
GiveUp = Callable[[Session, Exception], None]


# --- databases --------------------------------------------------------------------------

def _scratch() -> str | None:
    """Where examples keep their files: in memory when the machine has /dev/shm."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


_templates: dict[str, str] = {}


def _sqlite_database(root: Path) -> tuple[str, Callable[[], None]]:
    if "sqlite" not in _templates:
        folder = tempfile.mkdtemp(prefix="shop-sm-template-", dir=_scratch())
        atexit.register(shutil.rmtree, folder, True)
        path = Path(folder) / "template.sqlite3"
        engine = build_engine(f"sqlite:///{path}")
        Base.metadata.create_all(engine)
        engine.dispose()
        _templates["sqlite"] = str(path)
    target = root / "shop.sqlite3"
    shutil.copyfile(_templates["sqlite"], target)
    return f"sqlite:///{target}", lambda: None


def _postgres_database() -> tuple[str, Callable[[], None]]:
    server = os.environ["SHOP_TEST_DATABASE_URL"]
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    if "postgres" not in _templates:
        template = f"shop_sm_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{template}"'))
        engine = build_engine(make_url(server).set(database=template))
        Base.metadata.create_all(engine)
        engine.dispose()
        _templates["postgres"] = template

        def drop_template() -> None:
            with create_engine(server, isolation_level="AUTOCOMMIT").connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))

        atexit.register(drop_template)
    name = f"shop_sm_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{_templates["postgres"]}"'))
    admin.dispose()

    def drop() -> None:
        engine = create_engine(server, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    return url, drop


def _impatient(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor.execute("PRAGMA busy_timeout=100")
    else:
        cursor.execute("SET lock_timeout = '200ms'")
    cursor.close()


def backend() -> str:
    return os.environ.get("SHOP_STATEMACHINE_DB", "sqlite")


# --- the world --------------------------------------------------------------------------

class World:
    """One shop, its provider, mail server, broker and clock, for one example."""

    def __init__(self) -> None:
        CLOCK.offset = dt.timedelta(0)
        self.root = Path(tempfile.mkdtemp(prefix="shop-sm-", dir=_scratch()))
        if backend() == "postgres":
            self.url, self._drop = _postgres_database()
        else:
            self.url, self._drop = _sqlite_database(self.root)
        self.engine = build_engine(self.url)
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.settings = get_settings()
        self.provider = SimProvider(self.root / "dummy_payments", on_crash=self._note_leases,
                                    meanwhile=self._meanwhile)
        # Another actor, while a call is in flight, gives up at once on a lock the paused
        # one holds (SQLite's write lock, a PostgreSQL row lock) instead of waiting on it.
        self.impatient_engine = build_engine(self.url)
        sqlalchemy_event.listen(self.impatient_engine, "connect", _impatient)
        self.impatient_sessions = sessionmaker(bind=self.impatient_engine,
                                               expire_on_commit=False)
        self.mailer = FakeMailer()
        self.broker: list[Message] = []
        self.order_ids: list[uuid.UUID] = []
        self.accepted: set[str] = set()
        self.unexpected: list[str] = []
        self.undrained: list[str] = []
        self.emails_left_to_sweeper: set[uuid.UUID] = set()  # gave up on a 4xx
        self.log: list[str] = []
        # the warehouse: the requests it received, what it still has to answer for, and
        # its messages on ``shop.warehouse`` (routing key, body)
        self.requests: dict[uuid.UUID, str] = {}
        self.warehouse_left: dict[uuid.UUID, dict[str, int]] = {}
        self.warehouse_queue: list[tuple[str, dict[str, Any]]] = []
        self.dead_letters: list[tuple[str, str]] = []
        self._parcels = itertools.count(1)
        self._leases_at_crash: list[tuple[uuid.UUID, str]] = []
        self._serial = itertools.count()
        with self._session() as session:
            for sku, (price, stock) in PRODUCTS.items():
                service.put_product(session, sku=sku, data=ProductIn(
                    name=sku.title(), price=price, currency="USD", stock=stock))

    def close(self) -> None:
        self.engine.dispose()
        self.impatient_engine.dispose()
        self._drop()
        shutil.rmtree(self.root, ignore_errors=True)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        session = self.sessions()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    def _note(self, what: str) -> str:
        self.log.append(what)
        return what

    def _unexpected(self, where: str, exc: BaseException) -> None:
        self.unexpected.append(f"{where}: {type(exc).__name__}: {exc}"[:300])

    # -- what the machine asks about ----------------------------------------------------

    @property
    def pending_messages(self) -> int:
        return len(self.broker)

    @property
    def event_count(self) -> int:
        return len(self.provider.events)

    @property
    def order_count(self) -> int:
        return len(self.order_ids)

    def in_flight(self) -> int:
        with self._session() as session:
            return len(session.scalars(select(Order.id).where(
                Order.stage.in_(IN_FLIGHT_STAGES))).all())

    def can_place(self) -> bool:
        return self.order_count < MAX_ORDERS and self.in_flight() < MAX_IN_FLIGHT

    # -- the storefront -----------------------------------------------------------------

    def place_order(self, basket: int, method: int) -> str:
        """Checkout (``service.place_order``): the order and its first message, one commit."""
        n = len(self.order_ids)
        data = OrderIn(
            email=f"customer{n}@example.com", name=f"Customer {n}",
            lines=[{"sku": sku, "quantity": qty}
                   for sku, qty in BASKETS[basket % len(BASKETS)].items()],
            payment_method=PAYMENT_METHODS[method % len(PAYMENT_METHODS)],
            shipping_address={"line1": "1 Main St", "city": "Springfield",
                              "postal_code": "12345", "country": "US"})
        with self._session() as session:
            order, _ = service.place_order(session, data=data, idempotency_key=None)
            self.order_ids.append(order.id)
        self._relay()
        return self._note(f"placed order {n}")

    # -- the broker and the workers -----------------------------------------------------

    def _relay(self) -> None:
        """The relay publishes what the outbox holds (``relay_batch``); tasks join the broker."""
        batch: list[OutboxMessage] = []
        try:
            with self._session() as session:
                relay_batch(session, publish=batch.append, limit=1000)
        except OperationalError:  # locked (by a call in flight): the next relay pass
            return
        tasks = sorted((m for m in batch if m.kind == "task"), key=self._message_key)
        for request in batch:  # the warehouse's own queue, bound to shop.events
            if request.kind == "event" and request.name == FULFILLMENT_ROUTING_KEY:
                order_id = uuid.UUID(str(request.payload["order_id"]))
                if order_id not in self.requests:
                    self.requests[order_id] = str(request.payload["message_id"])
                    self.warehouse_left[order_id] = {
                        str(x["sku"]): int(x["quantity"]) for x in request.payload["lines"]}
        self.broker.extend(Message(id=str(m.id), name=m.name, kwargs=dict(m.payload))
                           for m in tasks)

    def _message_key(self, message: OutboxMessage) -> tuple[int, int, int, str]:
        payload = message.payload
        if "event_id" in payload:
            subject = 100 + int(str(payload["event_id"]).rsplit("_", 1)[-1])
        else:
            subject = self._order_index(str(payload.get("order_id")))
        return (subject, _TASK_RANK.get(message.name, 99), int(payload.get("attempt", 0)),
                message.name)

    def _order_index(self, order_id: str) -> int:
        for index, known in enumerate(self.order_ids):
            if str(known) == order_id:
                return index
        return 99

    def deliver(self, pick: int, *, duplicate: bool = False) -> str:
        """A worker runs the ``pick``-th pending message; ``duplicate``: the broker will
        deliver it again whatever happens (at-least-once)."""
        if not self.broker:
            return "nothing pending"
        message = self.broker[pick % len(self.broker)]
        outcome = self._run(message)
        queued = any(m is message for m in self.broker)  # a copy run meanwhile may have won
        if outcome == "retry":
            message.retries += 1
        elif outcome == "crashed":
            message.redelivered = True
        elif queued and not duplicate:
            self.broker.remove(message)
            queued = False
        if duplicate:
            message.redelivered = True
        if not queued and (duplicate or outcome in ("retry", "crashed")):
            self.broker.append(message)
        self._relay()
        subject = message.kwargs.get("event_id") or self._order_index(
            str(message.kwargs.get("order_id")))
        return self._note(f"{message.name.rsplit('.', 1)[-1]}({subject}): {outcome}"
                          + (" (duplicated)" if duplicate else ""))

    def _run(self, message: Message) -> str:
        """What ``shop.messaging.runner.run_step`` does with one delivery."""
        owner = f"{message.id[:8]}:{message.retries}:{next(self._serial)}"
        work, on_exhausted = self._task(message, owner)
        if message.redelivered:
            try:
                started = self._count(f"{message.id}:{message.retries}", message.name)
                with self._session() as session:
                    failures = delivery_count(session, message_id=f"{message.id}:failures")
            except OperationalError:
                return "retry"
            if started > self.settings.max_deliveries:
                self._give_up(on_exhausted, RuntimeError("the task kept failing its worker"))
                return "dead-lettered"
            if failures >= self.settings.retry_max_attempts:
                return self._give_up(on_exhausted, RuntimeError("ran out of time too often"))
        try:
            with self._session() as session:
                mark_consumed(session, message_id=message.id)
                said = work(session)
        except WorkerKilled:
            self._after_crash()
            return "crashed"
        except (BusyError, StaleDataError, SlowDown):
            return "retry"
        except PermanentError as exc:
            return self._give_up(on_exhausted, exc)
        except Exception as exc:
            if not isinstance(exc, TransientError | OperationalError):
                self._unexpected(message.name, exc)
            try:
                failures = self._count(f"{message.id}:failures", message.name)
            except OperationalError:  # the database is unavailable too: retry, uncounted
                return "retry"
            if failures >= self.settings.retry_max_attempts:
                return self._give_up(on_exhausted, exc)
            return "retry"
        return f"done ({said})" if isinstance(said, str) else "done"

    def _count(self, key: str, task_name: str) -> int:
        with self._session() as session:
            return count_delivery(session, message_id=key, task_name=task_name)

    def _give_up(self, on_exhausted: GiveUp, exc: Exception) -> str:
        try:
            with self._session() as session:
                on_exhausted(session, exc)
        except WorkerKilled:
            self._after_crash()
            return "crashed"
        except (BusyError, StaleDataError):
            return "retry"
        except Exception as error:
            self._unexpected("give-up", error)
            return "dead-lettered"
        return "gave up"

    def _task(self, message: Message, owner: str) -> tuple[Work, GiveUp]:
        """The body and the give-up of each task, as ``shop/orders/tasks.py`` has them."""
        kwargs, gateway, mailer = message.kwargs, self.provider, self.mailer
        name = TaskName(message.name)
        if name is TaskName.HANDLE_PAYMENT_EVENT:
            event_id = str(kwargs["event_id"])

            def handle(session: Session) -> object:
                return payment_events.handle(session, event_id=event_id, gateway=gateway,
                                             owner=owner)

            def defer(session: Session, exc: Exception) -> None:
                payment_events.defer(session, event_id=event_id, error=str(exc))

            return handle, defer
        if name is TaskName.REFUND_LINES:  # shop/orders/refunds/tasks.py
            refund_id = uuid.UUID(str(kwargs["refund_id"]))

            def send(session: Session) -> object:
                return converge.refund_lines(session, refund_id=refund_id, gateway=gateway,
                                             owner=owner)

            def flag(session: Session, exc: Exception) -> None:
                refunds.give_up(session, refund_id=refund_id, error=exc)

            return send, flag
        order_id = uuid.UUID(str(kwargs["order_id"]))
        attempt = int(kwargs.get("attempt", 0))

        def give_up(session: Session, exc: Exception) -> None:
            if name is TaskName.SEND_CONFIRMATION and isinstance(exc, MailTransientError):
                self.emails_left_to_sweeper.add(order_id)
                return  # left to the sweeper (tasks._give_up_email)
            giving_up.give_up(session, task=name, order_id=order_id, owner=owner,
                              error=f"{type(exc).__name__}: {exc}"[:500],
                              attempt=attempt if name is TaskName.RELEASE_PAYMENT else None)

        def work(session: Session) -> None:
            if name is TaskName.CHECK_INVENTORY:
                steps.check_inventory(session, order_id=order_id)
            elif name is TaskName.CHARGE_PAYMENT:
                steps.charge_payment(session, order_id=order_id, gateway=gateway, owner=owner)
            elif name is TaskName.RESERVE_STOCK:
                steps.reserve_stock(session, order_id=order_id)
            elif name is TaskName.CAPTURE_PAYMENT:
                steps.capture_payment(session, order_id=order_id, gateway=gateway, owner=owner)
            elif name is TaskName.SEND_CONFIRMATION:
                steps.send_confirmation(session, order_id=order_id, mailer=mailer,
                                        sender=self.settings.mail_from)
            elif name is TaskName.REQUEST_FULFILLMENT:
                steps.request_fulfillment(session, order_id=order_id)
            elif name is TaskName.RELEASE_PAYMENT:
                converge.release(session, order_id=order_id, attempt=attempt,
                                      gateway=gateway, owner=owner)
            elif name is TaskName.SEND_SHIPMENT_EMAIL:
                fulfillment_emails.send_shipment_email(
                    session, order_id=order_id, shipment_id=str(kwargs["shipment_id"]),
                    mailer=mailer, sender=self.settings.mail_from)
            elif name is TaskName.SEND_LINE_REFUND_EMAIL:
                fulfillment_emails.send_line_refund_email(
                    session, order_id=order_id, message_id=str(kwargs["message_id"]),
                    mailer=mailer, sender=self.settings.mail_from)
            else:
                raise AssertionError(f"no such workflow task: {name}")

        return work, give_up

    # -- a worker killed mid-call -------------------------------------------------------

    def _note_leases(self) -> None:
        """At the kill: the leases held then (read without taking SQLite's write lock,
        which the dying step may hold)."""
        if self.url.startswith("sqlite"):
            path = make_url(self.url).database
            with contextlib.closing(sqlite3.connect(str(path))) as conn:
                rows = conn.execute("SELECT id, lease_owner FROM orders "
                                    "WHERE lease_owner IS NOT NULL").fetchall()
            self._leases_at_crash = [(uuid.UUID(hex=str(r[0])), str(r[1])) for r in rows]
            return
        with self.engine.connect() as conn:
            self._leases_at_crash = [(r[0], str(r[1])) for r in conn.execute(
                select(Order.id, Order.lease_owner).where(Order.lease_owner.is_not(None)))]

    def _after_crash(self) -> None:
        """Undo what shop's ``finally`` blocks did after the kill: a dead worker gives no
        lease back; it runs out (``expire_leases``)."""
        held, self._leases_at_crash = self._leases_at_crash, []
        with self._session() as session:
            for order_id, owner in held:
                session.execute(update(Order).where(Order.id == order_id).values(
                    lease_owner=owner, lease_until=db_now(DEAD_LEASE_SECONDS)))
            session.commit()

    def expire_leases(self) -> str:
        """Every lease and email claim runs out (their holders are dead by now): their
        times move into the past on the database's clock, as running out leaves them.
        (Not NULL: a lease with an owner and no end is a state the shop never makes, and
        its own lease handling is not built for it.)"""
        with self._session() as session:
            session.execute(update(Order).where(Order.lease_until.is_not(None))
                            .values(lease_until=db_now(-1)))
            session.execute(update(Notification).where(Notification.status == "sending")
                            .values(claimed_at=db_now(-EXPIRED_CLAIM_SECONDS)))
            session.commit()
        return self._note("leases expired")

    # -- the warehouse ----------------------------------------------------------------

    @property
    def warehouse_pending(self) -> int:
        return len(self.warehouse_queue)

    def warehouse_answers(self, pick: int, plan: str, count_shelf: bool = False) -> str:
        """The warehouse answers one request it still owes an answer for, by ``plan``;
        each parcel's delivery is queued with it (they may arrive in either order)."""
        owed = [oid for oid in self.requests if any(self.warehouse_left[oid].values())]
        if not owed:
            return "the warehouse owes nothing"
        order_id = owed[pick % len(owed)]
        left = self.warehouse_left[order_id]
        skus = sorted(sku for sku, units in left.items() if units)
        if plan == "ship all":
            self._parcel(order_id, {sku: left[sku] for sku in skus})
        elif plan == "ship one":
            self._parcel(order_id, {skus[0]: 1})
        elif plan == "split in two":
            first = {skus[0]: max(1, left[skus[0]] // 2)}
            self._parcel(order_id, first)
            rest = {sku: left[sku] for sku in skus if left[sku]}
            if rest:
                self._parcel(order_id, rest)
        elif plan == "cannot ship one line":
            self._cannot(order_id, {skus[-1]: left[skus[-1]]}, count_shelf)
        else:
            self._cannot(order_id, {sku: left[sku] for sku in skus}, count_shelf)
        return self._note(f"warehouse: {plan} of order {self._order_index(str(order_id))}")

    def _parcel(self, order_id: uuid.UUID, units: dict[str, int]) -> None:
        shipment_id = f"parcel-{next(self._parcels)}"
        for sku, quantity in units.items():
            self.warehouse_left[order_id][sku] -= quantity
        now = CLOCK.now().isoformat()
        self.warehouse_queue.append((SHIPPED, {
            "message_id": str(uuid.uuid4()), "order_id": str(order_id),
            "request_message_id": self.requests[order_id], "shipment_id": shipment_id,
            "lines": [{"sku": sku, "quantity": q} for sku, q in sorted(units.items())],
            "carrier": "DHL", "tracking_number": shipment_id,
            "tracking_url": f"https://track.example/{shipment_id}", "shipped_at": now}))
        self.warehouse_queue.append((DELIVERED, {
            "message_id": str(uuid.uuid4()), "order_id": str(order_id),
            "shipment_id": shipment_id, "delivered_at": now}))

    def _cannot(self, order_id: uuid.UUID, units: dict[str, int], count_shelf: bool) -> None:
        for sku, quantity in units.items():
            self.warehouse_left[order_id][sku] -= quantity
        body: dict[str, Any] = {
            "message_id": str(uuid.uuid4()), "order_id": str(order_id),
            "request_message_id": self.requests[order_id], "reason": "damaged",
            "lines": [{"sku": sku, "quantity": q} for sku, q in sorted(units.items())]}
        if count_shelf:  # one unit fewer on the shelf than the shop thinks
            with self._session() as session:
                body["on_hand"] = {sku: max(0, int(on_hand) - 1) for sku, on_hand in
                                   session.execute(select(Product.sku, Product.on_hand)
                                                   .where(Product.sku.in_(list(units))))}
        self.warehouse_queue.append((CANNOT_FULFIL, body))

    def warehouse_delivers(self, pick: int, *, duplicate: bool = False) -> str:
        """The shop's consumer takes the ``pick``-th message on ``shop.warehouse``;
        ``duplicate``: it comes again later whatever happens."""
        if not self.warehouse_queue:
            return "nothing from the warehouse"
        index = pick % len(self.warehouse_queue)
        routing_key, body = self.warehouse_queue[index]
        message = parse_warehouse_message(routing_key=routing_key,
                                          body=json.dumps(body).encode(),
                                          message_id=body["message_id"])
        try:
            with self._session() as session:
                outcome = fulfillment.apply(session, message=message)
        except fulfillment.Rejected as exc:
            self.dead_letters.append((str(body["order_id"]), exc.reason))
            outcome = f"dead-lettered ({exc.reason})"
        except EXPECTED_FAILURES as exc:  # put back (the consumer requeues it)
            self._relay()
            return self._note(f"warehouse {routing_key}: retry ({type(exc).__name__})")
        except Exception as exc:
            self._unexpected(f"warehouse {routing_key}", exc)
            outcome = "unexpected"
        if not duplicate:
            self.warehouse_queue.pop(index)
        self._relay()
        return self._note(f"warehouse {routing_key}: {outcome}"
                          + (" (duplicated)" if duplicate else ""))

    def warehouse_answers_everything(self) -> str:
        """The warehouse answers every request it still owes (each order its own plan,
        by its position and how far the example went), and its messages all arrive twice,
        the second time backwards."""
        for order_id in list(self.requests):
            if any(self.warehouse_left[order_id].values()):
                index = self._order_index(str(order_id)) + len(self.log)
                self.warehouse_answers(self.order_ids.index(order_id) if order_id in
                                       self.order_ids else 0,
                                       WAREHOUSE_PLANS[index % len(WAREHOUSE_PLANS)],
                                       count_shelf=index % 3 == 0)
        # (``warehouse_answers`` picks among the orders still owed: answer each in turn)
        while any(any(left.values()) for left in self.warehouse_left.values()):
            self.warehouse_answers(0, "ship all")
        self.warehouse_queue.extend(reversed(list(self.warehouse_queue)))
        return self._note("warehouse answered everything")

    def _deliver_warehouse(self) -> None:
        for _ in range(200):
            if not self.warehouse_queue:
                return
            self.warehouse_delivers(0)
        self.undrained.extend(f"warehouse {key}" for key, _ in self.warehouse_queue)

    # -- webhooks -----------------------------------------------------------------------

    def accept_event(self, pick: int) -> str:
        """The provider delivers the ``pick``-th event it sent (again, maybe):
        ``payment_events.accept`` records it and queues its handling."""
        if not self.provider.events:
            return "no events"
        event = self.provider.events[pick % len(self.provider.events)]
        try:
            with self._session() as session:
                new = payment_events.accept(session, event=event)
        except EXPECTED_FAILURES as exc:
            return self._note(f"webhook {event.id}: failed ({type(exc).__name__})")
        except Exception as exc:
            self._unexpected("webhook", exc)
            return "unexpected"
        self.accepted.add(event.id)
        self._relay()
        return self._note(f"webhook {event.id} {event.type}: {'new' if new else 'seen'}")

    def accept_new_events(self) -> str:
        """The provider delivers, in order, every event it has not delivered yet."""
        for index, sent in enumerate(list(self.provider.events)):
            if sent.id not in self.accepted:
                self.accept_event(index)
        return self._note("webhooks caught up")

    # -- beat ---------------------------------------------------------------------------

    def _beat(self, name: str, job: Callable[[Session, str], object]) -> str:
        owner = f"{name}:{next(self._serial)}"
        try:
            with self._session() as session:
                result = job(session, owner)
        except WorkerKilled:
            self._after_crash()
            result = "crashed"
        except EXPECTED_FAILURES as exc:
            result = f"failed ({type(exc).__name__})"
        except Exception as exc:
            self._unexpected(name, exc)
            result = "unexpected"
        self._relay()
        return self._note(f"{name}: {result}")

    def sweep(self) -> str:
        return self._beat("sweeper", lambda s, owner: sweeper.resume_stuck(
            s, older_than=self.settings.stuck_after_seconds, owner=owner))

    def reconcile(self) -> str:
        return self._beat("reconcile", lambda s, owner: dict(reconcile.reconcile(
            s, gateway=self.provider, owner=owner)))

    def expire_authentications(self) -> str:
        return self._beat("expire_authentications",
                          lambda s, owner: payment_events.expire_authentications(
                              s, gateway=self.provider, owner=owner,
                              older_than=self.settings.requires_action_timeout))

    # -- admin --------------------------------------------------------------------------

    def _admin(self, action: str, pick: int, call: Callable[[Session, uuid.UUID], object]) -> str:
        if not self.order_ids:
            return "no orders"
        index = pick % len(self.order_ids)
        try:
            with self._session() as session:
                call(session, self.order_ids[index])
            result = "done"
        except admin_service.OrderConflict:
            result = "conflict"
        except EXPECTED_FAILURES as exc:
            result = f"failed ({type(exc).__name__})"
        except Exception as exc:
            self._unexpected(f"admin {action}", exc)
            result = "unexpected"
        self._relay()
        return self._note(f"admin {action}({index}): {result}")

    def admin_retry(self, pick: int) -> str:
        return self._admin("retry", pick, lambda s, order_id: admin_service.retry(
            s, order_id=order_id, actor="admin"))

    def admin_cancel(self, pick: int) -> str:
        return self._admin("cancel", pick, lambda s, order_id: admin_service.cancel(
            s, order_id=order_id, actor="admin"))

    def admin_resend(self, pick: int, *, email: bool) -> str:
        what = TaskName.SEND_CONFIRMATION if email else TaskName.REQUEST_FULFILLMENT
        return self._admin("resend " + what.rsplit(".", 1)[-1], pick,
                           lambda s, order_id: admin_service.resend(
                               s, order_id=order_id, actor="admin", what=what))

    def admin_refund(self, pick: int, quantities: tuple[int, ...] = (1,),
                     restocks: tuple[bool, ...] = (False,), key: str | None = None,
                     twice: bool = False) -> str:
        """An admin refunds units of the order's lines (its i-th line: ``quantities[i]``
        units, ``restocks[i]``), with an ``Idempotency-Key`` or none; ``twice``: the same
        post again at once (a double click, or a retry after a lost answer)."""
        if not self.order_ids:
            return "no orders"
        index = pick % len(self.order_ids)
        order_id = self.order_ids[index]
        with self._session() as session:
            skus = sorted(session.scalars(select(OrderLine.sku)
                                          .where(OrderLine.order_id == order_id)))
        lines = [refunds.LineRequest(sku=sku, quantity=quantities[i % len(quantities)],
                                     restock=restocks[i % len(restocks)])
                 for i, sku in enumerate(skus) if quantities[i % len(quantities)] > 0]
        if not lines:
            lines = [refunds.LineRequest(sku=skus[0], quantity=1, restock=restocks[0])]
        said = []
        for _ in range(2 if twice else 1):
            try:
                with self._session() as session:
                    request = refunds.refund_for_admin(
                        session, order_id=order_id, lines=lines, reason="damaged", key=key,
                        actor="admin")
                    said.append(f"{request.amount} {request.status}")
            except (refunds.RefundError, OrderNotFound) as exc:
                said.append(f"refused ({type(exc).__name__})")
            except (*EXPECTED_FAILURES, OperationalError) as exc:
                said.append(f"failed ({type(exc).__name__})")
            except Exception as exc:
                self._unexpected("admin refund", exc)
                said.append("unexpected")
        self._relay()
        shown = ", ".join(f"{x.sku}x{x.quantity}{'+restock' if x.restock else ''}"
                          for x in lines)
        return self._note(f"admin refund({index}) [{shown}] key={key}: {'; '.join(said)}")

    # -- faults, the clock, the customer, the provider on its own --------------------------

    def provider_fault(self, op: str, mode: str, times: int = 1) -> str:
        """The next ``times`` calls of ``op`` ("*": any) fail that way."""
        self.provider.faults.append(Fault(op, mode, times))
        return self._note(f"provider fault: {mode} on the next {times} {op}")

    def smtp_fault(self, kind: str, times: int = 1) -> str:
        """The mail server answers the next ``times`` messages with a ``kind`` error."""
        self.mailer.faults.append([kind, times])
        return self._note(f"smtp fault: {kind} x{times}")

    def advance_clock(self, seconds: float) -> str:
        CLOCK.offset += dt.timedelta(seconds=seconds)
        return self._note(f"clock +{seconds:g}s")

    def beat_runs(self, minutes: int) -> str:
        """``minutes`` pass while beat runs (and no worker takes a message): every six
        minutes the sweeper, reconciliation and the 3-D Secure expiry."""
        for _ in range(max(1, minutes // 6)):
            self.advance_clock(360)
            self.sweep()
            self.reconcile()
            self.expire_authentications()
        return self._note(f"beat ran for {minutes} minutes")

    def customer_authenticates(self, pick: int, *, success: bool) -> str:
        waiting = self.provider.waiting_for_customer()
        if not waiting:
            return "nobody is authenticating"
        reference = waiting[pick % len(waiting)]
        self.provider.customer_authenticates(reference, success=success)
        return self._note(f"customer {'passes' if success else 'fails'} 3-D Secure")

    def lapse_authorizations(self) -> str:
        return self._note(f"provider lapsed {self.provider.lapse_authorizations(CLOCK.now())}")

    def merchant_refunds(self, pick: int, *, whole: bool) -> str:
        refunded = self.provider.merchant_refunds(pick, whole=whole)
        return self._note(f"dashboard refund ({'all' if whole else 'half'}) of {refunded}")

    # -- another actor, in the middle of a call ----------------------------------------

    def run_action(self, kind: str, pick: int) -> str:
        """One of ``ACTIONS``; ``pick`` chooses the message, event or order."""
        if kind == "deliver":
            return self.deliver(pick)
        if kind == "webhook":
            return self.accept_event(pick)
        if kind == "admin retry":
            return self.admin_retry(pick)
        if kind == "admin cancel":
            return self.admin_cancel(pick)
        if kind == "admin resend email":
            return self.admin_resend(pick, email=True)
        if kind in ("customer passes", "customer fails"):
            return self.customer_authenticates(pick, success=kind == "customer passes")
        if kind == "sweep":
            return self.sweep()
        if kind == "reconcile":
            return self.reconcile()
        if kind == "expire_authentications":
            return self.expire_authentications()
        if kind == "expire_leases":
            return self.expire_leases()
        if kind == "admin refund":
            return self.admin_refund(pick, quantities=(1, pick % 2), restocks=(pick % 3 == 0,))
        raise AssertionError(f"no such action: {kind}")

    def meanwhile(self, op: str, kind: str, pick: int) -> str:
        """Arm: once the next ``op`` call has taken effect at the provider, and before its
        caller hears back, another actor does ``kind``."""
        self.provider.faults.append(Fault(op, "meanwhile", 1, (kind, pick)))
        return self._note(f"meanwhile: {kind}({pick}) during the next {op}")

    def _meanwhile(self, action: Action) -> None:
        sessions, self.sessions = self.sessions, self.impatient_sessions
        self.provider.nested += 1
        try:
            self._note(f"  meanwhile {self.run_action(*action)}")
        except OperationalError as exc:  # locked by the paused call's transaction
            self._note(f"  meanwhile {action[0]}: failed ({type(exc).__name__})")
        except Exception as exc:
            self._unexpected(f"meanwhile {action[0]}", exc)
        finally:
            self.provider.nested -= 1
            self.sessions = sessions

    # -- settling -----------------------------------------------------------------------

    def settle(self, rounds: int = 12) -> None:
        """No more faults; time passes with beat running; every message and event gets
        through. Rounds of: leases run out, events delivered, messages drained, six
        minutes (once 61) pass, sweeper, reconciliation, 3-D Secure expiry."""
        self.provider.faults.clear()
        self.mailer.faults.clear()
        for number in range(rounds):
            self._deliver_everything()
            if number == 1:
                self.warehouse_answers_everything()
            self.advance_clock(3_660 if number == rounds // 2 else 360)
            self.sweep()
            self.reconcile()
            self.expire_authentications()
        self._deliver_everything()

    def _deliver_everything(self) -> None:
        self.expire_leases()
        self._deliver_warehouse()
        for _ in range(3):
            self.accept_new_events()
            for _ in range(400):
                if not self.broker:
                    break
                if self.deliver(0).endswith(": retry"):  # busy or failing: to the back
                    self.broker.append(self.broker.pop(0))
                    self.expire_leases()
            if not self.broker and all(e.id in self.accepted for e in self.provider.events):
                return
        self.undrained.extend(f"{m.name}({m.kwargs})" for m in self.broker)

    # -- reading it back ----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._session() as session:
            orders = session.scalars(select(Order).order_by(Order.created_at)).all()
            lines = session.execute(select(OrderLine.order_id, OrderLine.sku,
                                           OrderLine.quantity, OrderLine.shipped,
                                           OrderLine.unfulfilled)).all()
            goods = self._goods(session)
            flags = session.execute(select(Attention.order_id, Attention.kind)
                                    .where(Attention.resolved_at.is_(None))).all()
            sent = set(session.scalars(select(Notification.order_id).where(
                Notification.kind == steps.CONFIRMATION_KIND, Notification.status == "sent")))
            visible: set[uuid.UUID] = set()
            for status in ("pending", "requires_action"):
                visible |= {o.id for o in admin_service.list_orders(
                    session, status=status, limit=100).orders}
            visible |= {o.id for o in admin_service.list_orders(
                session, needs_attention=True, limit=100).orders}
            products = session.scalars(select(Product).order_by(Product.sku)).all()
            payments = session.scalars(select(Payment).order_by(Payment.id)).all()
            unhandled = len(session.scalars(select(WebhookEvent.id).where(
                WebhookEvent.processed_at.is_(None))).all())
            delivered = Counter(self.mailer.sent)
            refund_rows = self._refund_rows(session)
            order_rows = tuple(OrderRow(
                id=o.id, index=self._order_index(str(o.id)), stage=o.stage, status=o.status,
                total=o.total, attempt=o.payment_attempt, stock_reserved=o.stock_reserved,
                lines=tuple((sku, qty) for oid, sku, qty, _, _ in lines if oid == o.id),
                outstanding=tuple((sku, qty - shipped - unfulfilled)
                                  for oid, sku, qty, shipped, unfulfilled in lines
                                  if oid == o.id),
                **goods.get(o.id, {}),
                open_flags=frozenset(kind for oid, kind in flags if oid == o.id),
                email_ledger_sent=o.id in sent,
                emails_delivered=delivered[message_id_for(
                    f"{steps.CONFIRMATION_KIND}:{o.id}")],
                email_left_to_sweeper=o.id in self.emails_left_to_sweeper,
                in_admin_view=o.id in visible) for o in orders)
            product_rows = tuple(ProductRow(
                p.sku, p.on_hand, p.reserved, stocked=PRODUCTS[p.sku][1],
                shipped=int(session.scalar(select(func.sum(ShipmentLine.quantity))
                                           .where(ShipmentLine.sku == p.sku)) or 0),
                corrected=sum(int(e["to"]) - int(e["from"]) for e in session.scalars(
                    select(OrderEvent.detail).where(OrderEvent.type == "stock.corrected"))
                    if e.get("sku") == p.sku)) for p in products)
            payment_rows = tuple(PaymentRow(
                p.order_id, p.attempt, p.reference, p.status, p.amount, p.amount_captured,
                p.amount_refunded) for p in payments)
        intents = []
        for ref in self.provider.references:
            state = self.provider.state(ref)
            intents.append(IntentRow(
                reference=ref, order_id=state.metadata.get("order_id", ""),
                attempt=state.metadata.get("attempt", ""), status=state.status.value,
                amount=state.amount, amount_received=state.amount_received,
                amount_refunded=state.amount_refunded,
                captures=self.provider.captures[ref],
                captured_amounts=tuple(self.provider.captured_amounts.get(ref, ())),
                refunded_outside=self.provider.refunded_outside[ref]))
        return Snapshot(orders=order_rows, products=product_rows, payments=payment_rows,
                        intents=tuple(intents), unexpected=tuple(self.unexpected),
                        pending_messages=len(self.broker), unhandled_events=unhandled,
                        undrained=tuple(self.undrained), dead_letters=tuple(self.dead_letters),
                        **refund_rows,
                        initial_stock=tuple((sku, stock) for sku, (_, stock)
                                            in PRODUCTS.items()),
                        shipped=tuple((p.sku, p.shipped) for p in product_rows),
                        shop_refunds_by_key=tuple(
                            (key, tuple(amounts))
                            for key, amounts in self.provider.refunds_by_key.items()))

    def _goods(self, session: Session) -> dict[uuid.UUID, dict[str, Any]]:
        """Per order: its fulfillment, the line refunds, and the emails about its goods."""
        found: dict[uuid.UUID, dict[str, Any]] = {}

        def of(order_id: uuid.UUID) -> dict[str, Any]:
            return found.setdefault(order_id, {
                "shop_refunded": 0, "warehouse_refunds_asked": 0, "unfulfilled_to_refund": 0,
                "shipment_emails": (), "line_refund_emails": ()})

        for order_id, status in session.execute(
                select(FulfillmentRequest.order_id, FulfillmentRequest.status)):
            of(order_id)["fulfillment"] = status
        for r in session.scalars(select(RefundRequest)):
            if r.status == RefundStatus.SUCCEEDED:
                of(r.order_id)["shop_refunded"] += r.amount
            if r.source == RefundSource.WAREHOUSE:
                of(r.order_id)["warehouse_refunds_asked"] += r.amount
        for u in session.scalars(select(UnfulfilledLine).where(UnfulfilledLine.refund_key != "")):
            of(u.order_id)["unfulfilled_to_refund"] += u.amount
        sent = {n.key: n.status == "sent" for n in session.scalars(select(Notification))}
        delivered = Counter(self.mailer.sent)
        for shipment in session.scalars(select(Shipment).order_by(Shipment.id)):
            key = f"{fulfillment_emails.SHIPPED_KIND}:{shipment.shipment_id}"
            of(shipment.order_id)["shipment_emails"] += (
                (shipment.shipment_id, sent.get(key, False), delivered[message_id_for(key)]),)
        for message_id, order_id in {(row.message_id, row.order_id) for row in session.execute(
                select(UnfulfilledLine.message_id, UnfulfilledLine.order_id))}:
            key = (f"{fulfillment_emails.LINE_REFUND_KIND}:"
                   f"{uuid.uuid5(uuid.NAMESPACE_URL, message_id)}")
            of(order_id)["line_refund_emails"] += (
                (message_id, sent.get(key, False), delivered[message_id_for(key)]),)
        return found

    def _refund_rows(self, session: Session) -> dict[str, Any]:
        """Line refunds, the ledger's refund rows, reservations and units refunded."""
        payments = {p.id: p for p in session.scalars(select(Payment))}
        by_attempt = {(p.order_id, p.attempt): p for p in payments.values()}
        lines: dict[uuid.UUID, list[RefundRequestLine]] = {}
        for line in session.scalars(select(RefundRequestLine).order_by(RefundRequestLine.id)):
            lines.setdefault(line.request_id, []).append(line)
        requests = []
        for r in session.scalars(select(RefundRequest).order_by(RefundRequest.created_at)):
            payment = by_attempt[(r.order_id, r.payment_attempt)]
            requests.append(RefundRow(
                order_id=r.order_id, status=r.status, amount=r.amount,
                payment_reference=payment.reference,
                provider_key=refunds.provider_key(r, payment),
                lines=tuple((x.sku, x.quantity, x.restock, x.restocked)
                            for x in lines.get(r.id, []))))
        return {
            "refunds": tuple(requests),
            "ledger_refunds": tuple(
                LedgerRefundRow(payments[x.payment_id].reference, x.amount, x.reason)
                for x in session.scalars(select(Refund).order_by(Refund.id))),
            "refund_pending": tuple((p.reference, p.amount_refund_pending)
                                    for p in payments.values()),
            "line_refunded": tuple((order_id, sku, units) for order_id, sku, units in
                                   session.execute(select(OrderLine.order_id, OrderLine.sku,
                                                          OrderLine.quantity_refunded))),
        }


# The shop functions this driver calls (what to remap after the move).
SHOP_CALLS: tuple[str, ...] = (
    "shop.orders.service.put_product", "shop.orders.service.place_order",
    "shop.orders.workflow.steps.check_inventory", "shop.orders.workflow.steps.charge_payment",
    "shop.orders.workflow.steps.reserve_stock", "shop.orders.workflow.steps.capture_payment",
    "shop.orders.workflow.steps.send_confirmation",
    "shop.orders.workflow.steps.request_fulfillment",
    "shop.orders.provider.converge.release", "shop.orders.workflow.giving_up.give_up",
    "shop.orders.provider.events.accept", "shop.orders.provider.events.handle",
    "shop.orders.provider.events.defer", "shop.orders.provider.events.expire_authentications",
    "shop.orders.workflow.sweeper.resume_stuck", "shop.orders.provider.reconcile.reconcile",
    "shop.orders.admin.service.retry", "shop.orders.admin.service.cancel",
    "shop.orders.admin.service.resend", "shop.orders.admin.service.list_orders",
    "shop.messaging.service.relay_batch", "shop.messaging.service.mark_consumed",
    "shop.messaging.service.count_delivery", "shop.messaging.service.delivery_count",
    "shop.notifications.service.message_id_for", "shop.payments.dummy.DummyGateway",
    "shop.orders.fulfillment.service.apply", "shop.orders.fulfillment.messages.parse",
    "shop.orders.fulfillment.emails.send_shipment_email",
    "shop.orders.fulfillment.emails.send_line_refund_email",
    "shop.orders.refunds.service.refund_for_admin", "shop.orders.refunds.service.give_up",
    "shop.orders.refunds.service.provider_key", "shop.orders.provider.converge.refund_lines",
)
