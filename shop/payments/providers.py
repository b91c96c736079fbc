"""Choose the payment gateway the settings ask for."""

from __future__ import annotations

from functools import lru_cache

from shop import tracing
from shop.config import Settings, get_settings
from shop.db import get_sessionmaker
from shop.payments.budget import Budget, BudgetedGateway, Limits
from shop.payments.dummy import DummyGateway
from shop.payments.faults import FaultyGateway
from shop.payments.gateway import PaymentGateway, PaymentProviderError, StripeGateway
from shop.payments.metered import MeteredGateway
from shop.payments.traced import TracedGateway


def build_gateway(settings: Settings) -> PaymentGateway:
    """Stripe when the settings choose it, else the dummy provider that needs no server.

    A set ``stripe_api_base`` means a Stripe emulator (localstripe in tests), which
    is sent only the request fields it understands.
    """
    gateway: PaymentGateway
    if settings.provider == "stripe":
        if settings.stripe_api_key is None:
            raise PaymentProviderError("SHOP_PAYMENT_PROVIDER=stripe needs SHOP_STRIPE_API_KEY")
        gateway = StripeGateway(
            api_key=settings.stripe_api_key.get_secret_value(),
            api_base=settings.stripe_api_base,
            emulator=settings.stripe_api_base is not None,
        )
    else:
        limits = settings.dummy_payment_limits
        gateway = DummyGateway(
            state_dir=settings.data_dir / "dummy_payments",
            latency_ms=settings.dummy_payment_latency_ms,
            limits=None if limits is None else (float(limits.split(",")[0]),
                                                float(limits.split(",")[1])))
    return gateway


def layered(gateway: PaymentGateway, settings: Settings) -> PaymentGateway:
    """``gateway`` as a process uses it: injected faults when asked, within the
    deployment's one shared budget of provider calls, every call timed and counted, and
    a span when tracing is on (its time includes the budget's waits)."""
    if settings.payment_faults is not None:
        gateway = FaultyGateway(gateway, settings.payment_faults)
    if settings.provider_limits is not None:
        account, endpoint = settings.provider_limits
        gateway = BudgetedGateway(gateway, Budget(
            sessions=get_sessionmaker(), limits=Limits(account_rps=account,
                                                       endpoint_rps=endpoint)))
    gateway = MeteredGateway(gateway)
    return TracedGateway(gateway) if tracing.enabled(settings) else gateway


@lru_cache(maxsize=1)
def get_gateway() -> PaymentGateway:
    """The process's gateway for the current settings, built once (one HTTP session).

    Built lazily, so each forked worker child makes its own after the fork.
    """
    settings = get_settings()
    return layered(build_gateway(settings), settings)
