"""Payment attempts: authorize, capture, release and inspect, safe to run twice.

Rules that keep money right under redelivery:
- the provider idempotency key is ``<order id>:<attempt>:<operation>``, never random;
- the intent id is stored (and committed) before the intent is confirmed, so a re-run
  asks the provider about that intent instead of creating another;
- no provider call happens inside a database transaction, so ``authorize`` commits its
  own small writes (the intent id, a decline reason) before calling out: these are
  the module's deliberate extra commits;
- what the provider said comes back as a ``Result`` whose ``Outcome`` the orders
  domain maps to a transition; ``record`` (the only writer of ``Payment.status``)
  stores it in the caller's transaction, beside that transition.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from shop.db import insert_for, utcnow
from shop.exceptions import InvariantBroken
from shop.payments.gateway import (
    IntentState,
    IntentStatus,
    PaymentDeclined,
    PaymentGateway,
    PaymentProviderError,
    PaymentTransientError,
)
from shop.payments.models import SETTLED, Payment, PaymentStatus, Refund

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What the provider's answer means for the order."""

    AUTHORIZED = "authorized"  # money held: capture it next
    REQUIRES_ACTION = "requires_action"  # the customer must authenticate
    DECLINED = "declined"  # the card said no (``reason``)
    REJECTED = "rejected"  # the provider refused our request (bad method, amount, …)
    CAPTURED = "captured"  # money taken
    VOIDED = "voided"  # nothing held any more
    REFUNDED = "refunded"  # taken, then given back (in full or in part)
    NO_INTENT = "no_intent"  # nothing was ever created at the provider


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    payment_id: int
    reference: str | None
    reason: str | None = None  # a stable code (card_declined, …)
    message: str | None = None  # for the customer (the provider's decline text)
    detail: str | None = None  # for admins and logs only
    captured: int = 0  # the provider's totals
    refunded: int = 0
    client_secret: str | None = None


def attempt_key(order_id: uuid.UUID, attempt: int) -> str:
    """The idempotency key of one payment attempt; operations append a suffix."""
    return f"{order_id}:{attempt}"


def find_attempt(session: Session, *, order_id: uuid.UUID, attempt: int) -> Payment | None:
    return session.scalar(
        select(Payment).where(Payment.order_id == order_id, Payment.attempt == attempt))


def find_by_reference(session: Session, *, reference: str) -> Payment | None:
    return session.scalar(select(Payment).where(Payment.reference == reference))


def latest_attempt(session: Session, *, order_id: uuid.UUID) -> Payment | None:
    return session.scalar(select(Payment).where(Payment.order_id == order_id)
                          .order_by(Payment.attempt.desc()).limit(1))


def open_attempt(
    session: Session, *, order_id: uuid.UUID, attempt: int, amount: int, currency: str,
    provider: str,
) -> Payment:
    """The payment row of this attempt, created if it is new (no commit: the caller's
    commit, before any provider call, carries it)."""
    created: Payment | None = session.scalars(
        insert_for(session, Payment)
        .values(order_id=order_id, attempt=attempt, provider=provider, amount=amount,
                currency=currency, idempotency_key=attempt_key(order_id, attempt),
                status=PaymentStatus.CREATED, amount_captured=0, amount_refunded=0,
                created_at=utcnow(), updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["order_id", "attempt"])  # type: ignore[attr-defined]
        .returning(Payment)
        .execution_options(populate_existing=True)).one_or_none()
    if created is not None:
        return created
    payment = find_attempt(session, order_id=order_id, attempt=attempt)
    if payment is None:
        raise InvariantBroken("payment is missing")
    return payment


def authorize(
    session: Session, *, payment: Payment, payment_method: str, gateway: PaymentGateway,
) -> Result:
    """Authorize the attempt's amount (manual capture) and say how it went.

    One provider call on the happy path: the intent is created and confirmed together.
    Its key is the attempt's, so a create whose answer was lost is simply sent again and
    the provider replays the first answer; the provider is asked (``retrieve``) only on
    a redelivery, when the intent's id is already stored.
    """
    if payment.decline_code is not None:  # declined before a crash: keep the real reason
        return _result(payment, Outcome.DECLINED, reason=payment.decline_code)
    if payment.reference is None and not getattr(gateway, "honours_keys", True):
        # A provider that ignores idempotency keys (localstripe) would authorize twice
        # if the create's answer were lost: create unconfirmed, store it, then confirm.
        try:
            _create_unconfirmed(session, payment=payment, payment_method=payment_method,
                                gateway=gateway)
        except PaymentProviderError as exc:
            return _result(payment, Outcome.REJECTED, reason="payment_rejected",
                           detail=str(exc))
    if payment.reference is None:
        try:
            state = _create_confirmed(session, payment=payment, payment_method=payment_method,
                                      gateway=gateway)
        except PaymentDeclined as exc:
            return _declined(session, payment=payment, reason=exc.reason,
                             message=exc.message, gateway=gateway, reference=exc.reference)
        except PaymentProviderError as exc:
            return _result(payment, Outcome.REJECTED, reason="payment_rejected",
                           detail=str(exc))
    else:  # a redelivery, or a re-run after a crash: ask what the intent is now
        state = gateway.retrieve(payment.reference)
        if state.status is IntentStatus.REQUIRES_CONFIRMATION:  # made unconfirmed (0.1)
            try:
                state = gateway.confirm(payment.reference,
                                        idempotency_key=f"{payment.idempotency_key}:confirm")
            except PaymentDeclined as exc:
                return _declined(session, payment=payment, reason=exc.reason,
                                 message=exc.message, gateway=gateway)
    if state.status is IntentStatus.REQUIRES_PAYMENT_METHOD:
        return _declined(session, payment=payment, reason=state.decline_code or "card_declined",
                         message=state.decline_message or "", gateway=gateway)
    result = classify(payment, state)
    if result.outcome is Outcome.VOIDED:  # cancelled at the provider before we saw it
        return _result(payment, Outcome.DECLINED, reason=state.decline_code or "payment_cancelled",
                       message=state.decline_message)
    return result


def _create_confirmed(
    session: Session, *, payment: Payment, payment_method: str, gateway: PaymentGateway,
) -> IntentState:
    """Create and confirm the attempt's intent in one call, and store its id."""
    state = gateway.create_intent(
        amount=payment.amount, currency=payment.currency, payment_method=payment_method,
        metadata={"order_id": str(payment.order_id), "attempt": str(payment.attempt)},
        idempotency_key=f"{payment.idempotency_key}:authorize", confirm=True,
    )
    _store_reference(session, payment=payment, state=state, gateway=gateway)
    return state


def _create_unconfirmed(
    session: Session, *, payment: Payment, payment_method: str, gateway: PaymentGateway,
) -> None:
    """Create the attempt's intent without confirming it, and store its id (for a
    provider that ignores keys: a retry then finds the id and confirms that intent)."""
    state = gateway.create_intent(
        amount=payment.amount, currency=payment.currency, payment_method=payment_method,
        metadata={"order_id": str(payment.order_id), "attempt": str(payment.attempt)},
        idempotency_key=f"{payment.idempotency_key}:create",
    )
    _store_reference(session, payment=payment, state=state, gateway=gateway)


def _store_reference(session: Session, *, payment: Payment, state: IntentState,
                     gateway: PaymentGateway) -> None:
    stored = session.execute(
        update(Payment)
        .where(Payment.id == payment.id, Payment.reference.is_(None))
        .values(reference=state.reference, status=PaymentStatus.PENDING,
                client_secret=state.client_secret)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if stored.rowcount == 0:  # type: ignore[attr-defined]
        session.refresh(payment)
        if payment.reference != state.reference:  # a provider that ignored the key (an
            # emulator, or a key older than its 24 h): this call's intent is ours to let go
            _cancel_quietly(gateway, state.reference, f"{payment.idempotency_key}:orphan")
    else:  # what was just stored, without reading it back
        for name, value in (("reference", state.reference), ("status", PaymentStatus.PENDING),
                            ("client_secret", state.client_secret)):
            set_committed_value(payment, name, value)


def adopt(session: Session, *, payment: Payment, reference: str) -> None:
    """Record on an attempt the intent that its lost create answer made (no commit)."""
    session.execute(update(Payment)
                    .where(Payment.id == payment.id, Payment.reference.is_(None))
                    .values(reference=reference, status=PaymentStatus.PENDING)
                    .execution_options(synchronize_session=False))
    session.expire(payment)


def _declined(session: Session, *, payment: Payment, reason: str, message: str,
              gateway: PaymentGateway, reference: str | None = None) -> Result:
    # The reason (and the intent a confirming create declined on) is committed before
    # the cancel, so a re-run after a crash between the two still reports the card's
    # answer, not the cancellation.
    values: dict[str, object] = {"decline_code": reason}
    if reference is not None and payment.reference is None:
        values.update(reference=reference, status=PaymentStatus.PENDING)
    session.execute(update(Payment).where(Payment.id == payment.id).values(**values))
    session.commit()
    session.refresh(payment)
    if payment.reference is None:  # declined before any intent existed: nothing to cancel
        return _result(payment, Outcome.DECLINED, reason=reason, message=message)
    if payment.reference is None:
        raise InvariantBroken("payment.reference is missing")
    _cancel_quietly(gateway, payment.reference, f"{payment.idempotency_key}:cancel")
    return _result(payment, Outcome.DECLINED, reason=reason, message=message)


def _cancel_quietly(gateway: PaymentGateway, reference: str, key: str) -> None:
    try:
        gateway.cancel(reference, idempotency_key=key)
    except PaymentProviderError:
        log.info("intent %s was not cancellable", reference)


def capture(*, payment: Payment, amount: int, gateway: PaymentGateway) -> Result:
    """Capture an authorized intent: one call; its key makes a second run harmless.

    A lost answer is retried with the same key, and the provider replays what it did.
    Only a refusal (already captured under another key, cancelled meanwhile) is looked
    into. ``PaymentTransientError`` while the answer is unknown: the caller must not
    decide anything about the money until the provider says.
    """
    if payment.reference is None:
        raise InvariantBroken(f"payment {payment.id} is captured without an intent")
    try:
        state = gateway.capture(payment.reference, amount=amount,
                                idempotency_key=f"{payment.idempotency_key}:capture")
    except PaymentProviderError:
        state = gateway.retrieve(payment.reference)
        if state.status is IntentStatus.REQUIRES_CAPTURE:
            raise
    return _settled(classify(payment, state))


def inspect(*, payment: Payment, gateway: PaymentGateway) -> Result:
    """What the provider says about the attempt now (no writes, no changes)."""
    if payment.reference is None:
        return _result(payment, Outcome.NO_INTENT)
    return classify(payment, gateway.retrieve(payment.reference))


def cancel(*, payment: Payment, gateway: PaymentGateway) -> Result:
    """Cancel an intent that has taken no money; if it took some first (the customer won
    the race), the result says so instead: the caller follows the provider's state."""
    if payment.reference is None:
        return _result(payment, Outcome.NO_INTENT)
    return classify(payment, _cancelled(payment, gateway))


def _cancelled(payment: Payment, gateway: PaymentGateway) -> IntentState:
    if payment.reference is None:
        raise InvariantBroken("payment.reference is missing")
    state = gateway.retrieve(payment.reference)
    if state.status.cancellable:
        try:
            state = gateway.cancel(payment.reference,
                                   idempotency_key=f"{payment.idempotency_key}:cancel")
        except PaymentProviderError:
            state = gateway.retrieve(payment.reference)  # captured meanwhile, or cancelled
    return state


def release(*, payment: Payment, gateway: PaymentGateway) -> Result:
    """Cancel what the attempt holds, or refund what it took; safe to repeat.

    ``PaymentTransientError`` while the provider cannot say or is still processing.
    """
    if payment.reference is None:
        return _result(payment, Outcome.NO_INTENT)
    state = _cancelled(payment, gateway)
    if state.status is IntentStatus.SUCCEEDED:
        remaining = state.amount_received - state.amount_refunded
        if remaining > 0:
            gateway.refund(payment.reference, amount=remaining,
                           idempotency_key=f"{payment.idempotency_key}:refund")
            state = gateway.retrieve(payment.reference)
    result = _settled(classify(payment, state))
    if result.outcome in (Outcome.AUTHORIZED, Outcome.CAPTURED):
        raise PaymentTransientError(f"intent {state.reference} is still {state.status}")
    return result


def holds_money(state: IntentState) -> bool:
    """Whether an intent holds or took money that nobody gave back (or may, on 3-D Secure)."""
    return state.status in (IntentStatus.REQUIRES_CAPTURE, IntentStatus.REQUIRES_ACTION,
                            IntentStatus.PROCESSING) or (
        state.status is IntentStatus.SUCCEEDED and state.amount_received > state.amount_refunded)


def known_references(session: Session, *, references: list[str]) -> set[str]:
    found = session.scalars(select(Payment.reference).where(Payment.reference.in_(references)))
    return {reference for reference in found if reference is not None}


def expiring(session: Session, *, authorized_before: dt.datetime, limit: int) -> list[uuid.UUID]:
    """Orders whose authorization is older than ``authorized_before`` and still held."""
    return list(session.scalars(
        select(Payment.order_id).where(Payment.status == PaymentStatus.AUTHORIZED,
                                       Payment.created_at < authorized_before)
        .order_by(Payment.created_at).limit(limit)))


def classify(payment: Payment, state: IntentState) -> Result:
    """The outcome an intent's state stands for."""
    status = state.status
    outcome = {
        IntentStatus.REQUIRES_CAPTURE: Outcome.AUTHORIZED,
        IntentStatus.REQUIRES_ACTION: Outcome.REQUIRES_ACTION,
        IntentStatus.REQUIRES_PAYMENT_METHOD: Outcome.DECLINED,
        IntentStatus.CANCELED: Outcome.VOIDED,
        IntentStatus.REQUIRES_CONFIRMATION: Outcome.VOIDED,  # never confirmed: holds nothing
    }.get(status)
    if status is IntentStatus.SUCCEEDED:
        outcome = Outcome.REFUNDED if state.amount_refunded > 0 else Outcome.CAPTURED
    if outcome is None:  # processing: the provider has not decided yet
        raise PaymentTransientError(f"intent {state.reference} is {status}; asking again later")
    return _result(payment, outcome, reason=state.decline_code, message=state.decline_message,
                   captured=state.amount_received, refunded=state.amount_refunded,
                   client_secret=state.client_secret)


def _settled(result: Result) -> Result:
    if result.outcome is Outcome.REQUIRES_ACTION:
        raise PaymentTransientError(f"intent {result.reference} waits for the customer")
    return result


def _result(payment: Payment, outcome: Outcome, **fields: object) -> Result:
    return Result(outcome, payment.id, payment.reference, **fields)  # type: ignore[arg-type]


_STATUS_OF: dict[Outcome, PaymentStatus] = {
    Outcome.AUTHORIZED: PaymentStatus.AUTHORIZED,
    Outcome.REQUIRES_ACTION: PaymentStatus.REQUIRES_ACTION,
    Outcome.DECLINED: PaymentStatus.FAILED,
    Outcome.REJECTED: PaymentStatus.FAILED,
    Outcome.CAPTURED: PaymentStatus.CAPTURED,
    Outcome.VOIDED: PaymentStatus.VOIDED,
}


def record(session: Session, *, result: Result, payment: Payment | None = None) -> Payment:
    """Store what the provider said on the attempt, in the caller's transaction (no commit).

    The only writer of ``Payment.status``. Refunds the provider reports beyond what is
    recorded become ``Refund`` rows, so a refund is counted once however it is learnt.
    ``payment`` is the attempt's row when the caller has it current (it saves a read).
    """
    if payment is None or payment.id != result.payment_id:
        payment = session.get(Payment, result.payment_id, populate_existing=True)
    if payment is None:
        raise InvariantBroken("payment is missing")
    if result.outcome is Outcome.NO_INTENT:
        if payment.status == PaymentStatus.CREATED:
            payment.status = PaymentStatus.FAILED
        return payment
    if result.outcome is Outcome.VOIDED and payment.status == PaymentStatus.FAILED:
        return payment  # a declined attempt that was cleaned up stays "failed"
    if result.outcome in (Outcome.DECLINED, Outcome.REJECTED):
        payment.decline_code = result.reason
        payment.last_error = result.detail or payment.last_error
    if result.client_secret is not None:
        payment.client_secret = result.client_secret
    payment.verified_at = None  # what changed is checked against the provider again
    if result.captured:
        payment.amount_captured = max(payment.amount_captured, result.captured)
        payment.captured_at = payment.captured_at or utcnow()
    if result.refunded > 0:
        _add_refund(session, payment=payment, total=result.refunded)
    if result.outcome is Outcome.REFUNDED:
        full = payment.amount_refunded >= payment.amount_captured
        payment.status = PaymentStatus.REFUNDED if full else PaymentStatus.PARTIALLY_REFUNDED
    else:
        payment.status = _STATUS_OF[result.outcome]
    return payment


def _add_refund(session: Session, *, payment: Payment, total: int) -> None:
    """Take the provider's refunded ``total`` into the ledger: whatever no ``Refund`` row
    explains yet, beyond the shop's own line refunds still in flight
    (``amount_refund_pending``, recorded by ``record_refund`` when they are seen
    through), becomes one row (a dashboard refund, or a release's)."""
    payment.amount_refunded = max(payment.amount_refunded, total)
    recorded = session.scalar(select(func.coalesce(func.sum(Refund.amount), 0))
                              .where(Refund.payment_id == payment.id)) or 0
    unexplained = payment.amount_refunded - recorded - payment.amount_refund_pending
    if unexplained > 0:  # the reference names where the ledger's sum now stands: unique
        session.add(Refund(payment_id=payment.id, amount=unexplained,
                           reference=f"{payment.reference}:refunded:{recorded + unexplained}",
                           currency=payment.currency, reason="requested_by_shop"))


# --- line refunds: reserved when decided, sent once, recorded once --------------------


def refundable(payment: Payment) -> int:
    """What the attempt captured that is neither refunded nor reserved for a refund."""
    return max(0, payment.amount_captured - payment.amount_refunded
               - payment.amount_refund_pending)


def reserve_refund(session: Session, *, payment: Payment, amount: int) -> bool:
    """Reserve ``amount`` for a line refund if it fits in what remains (one conditional
    update: concurrent reservations can never together exceed it); no commit."""
    done = session.execute(
        update(Payment)
        .where(Payment.id == payment.id,
               Payment.amount_captured - Payment.amount_refunded
               - Payment.amount_refund_pending >= amount)
        .values(amount_refund_pending=Payment.amount_refund_pending + amount)
        .execution_options(synchronize_session=False))
    session.expire(payment)
    return bool(done.rowcount)  # type: ignore[attr-defined]


def refund(*, payment: Payment, amount: int, key: str,
           gateway: PaymentGateway) -> tuple[str, Result]:
    """Give back ``amount`` of the captured attempt under ``key``; the provider's refund id
    and what the intent says afterwards.

    ``PaymentTransientError``: the outcome is unknown; send again with the same key (the
    provider replays the first answer). ``PaymentProviderError``: refused, nothing moved.
    """
    if payment.reference is None:
        raise InvariantBroken(f"payment {payment.id} is refunded without an intent")
    done = gateway.refund(payment.reference, amount=amount, idempotency_key=key)
    return done.reference, classify(payment, gateway.retrieve(payment.reference))


def record_refund(session: Session, *, payment: Payment, amount: int, reference: str,
                  reason: str, result: Result) -> Payment:
    """A line refund the provider made: its own ``Refund`` row, its reservation let go,
    and the intent's totals recorded (in the caller's transaction)."""
    session.add(Refund(payment_id=payment.id, amount=amount, reference=reference,
                       currency=payment.currency, reason=reason[:64]))
    payment.amount_refund_pending = max(0, payment.amount_refund_pending - amount)
    return record(session, result=result, payment=payment)


def release_refund(session: Session, *, payment: Payment, amount: int) -> None:
    """A line refund that moved no money: its reservation let go (the caller commits);
    provider refunds it held back from the ledger are taken in now."""
    payment.amount_refund_pending = max(0, payment.amount_refund_pending - amount)
    if payment.amount_refunded > 0:
        _add_refund(session, payment=payment, total=payment.amount_refunded)


def unsettled(payment: Payment) -> bool:
    """Whether the attempt may still hold money at the provider."""
    return PaymentStatus(payment.status) not in SETTLED and payment.reference is not None


def record_dispute(session: Session, *, payment: Payment, amount: int) -> None:
    """The amount an open dispute holds on the attempt (0 once it closed; the caller
    commits). A lost dispute's money shows as refunded by the provider's next answer."""
    payment.amount_disputed = max(0, amount)
    payment.verified_at = None


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    """The shop's ledger of one attempt against what the provider says, to the cent."""

    reference: str
    currency: str
    ours: tuple[int, int]  # captured, refunded
    theirs: tuple[int, int]

    @property
    def agrees(self) -> bool:
        return self.ours == self.theirs

    def describe(self) -> str:
        return (f"intent {self.reference}: the shop's ledger has captured {self.ours[0]}, "
                f"refunded {self.ours[1]} {self.currency}; the provider has captured "
                f"{self.theirs[0]}, refunded {self.theirs[1]} {self.currency}")


def check_ledger(*, payment: Payment, gateway: PaymentGateway) -> LedgerCheck | None:
    """Compare the attempt's ledger with the provider (no writes); None without an intent."""
    if payment.reference is None:
        return None
    state = gateway.retrieve(payment.reference)
    return LedgerCheck(reference=payment.reference, currency=payment.currency.upper(),
                       ours=(payment.amount_captured, payment.amount_refunded),
                       theirs=(state.amount_received, state.amount_refunded))


def mark_verified(session: Session, *, payment: Payment) -> None:
    """The provider agreed with the ledger just now (the caller commits)."""
    payment.verified_at = utcnow()


def unverified(session: Session, *, settled_before: dt.datetime, limit: int) -> list[int]:
    """Attempts whose ledger changed since the provider last agreed with it."""
    return list(session.scalars(
        select(Payment.id).where(Payment.verified_at.is_(None), Payment.reference.is_not(None),
                                 Payment.status.in_(VERIFIABLE),
                                 Payment.updated_at < settled_before)
        .order_by(Payment.updated_at).limit(limit)))


VERIFIABLE = [PaymentStatus.CAPTURED, PaymentStatus.REFUNDED, PaymentStatus.PARTIALLY_REFUNDED,
              PaymentStatus.VOIDED]
