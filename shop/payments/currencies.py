"""What the payment provider accepts: currencies and the amounts it will charge.

Stripe charges at least a minimum per currency and at most eight digits of minor
units (99,999,999). Checkout and the admin catalogue check against this table, so
an order the provider would refuse is a clear 422 instead of a failure later.
The table holds Stripe's card currencies with a published minimum; a currency that
is not here is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_AMOUNT = 99_999_999  # Stripe: at most eight digits of minor units


@dataclass(frozen=True, slots=True)
class CurrencyRule:
    code: str
    minimum: int  # minor units
    maximum: int = MAX_AMOUNT


# Stripe's minimum charge amounts, in minor units (JPY is zero-decimal).
_MINIMUMS: dict[str, int] = {
    "USD": 50, "AED": 200, "AUD": 50, "BGN": 100, "BRL": 50, "CAD": 50, "CHF": 50,
    "CZK": 1500, "DKK": 250, "EUR": 50, "GBP": 30, "HKD": 400, "HUF": 17500, "INR": 50,
    "JPY": 50, "MXN": 1000, "MYR": 200, "NOK": 300, "NZD": 50, "PLN": 200, "RON": 200,
    "SEK": 300, "SGD": 50, "THB": 1000,
}
CURRENCIES: dict[str, CurrencyRule] = {
    code: CurrencyRule(code, minimum) for code, minimum in _MINIMUMS.items()
}


def rule_for(currency: str) -> CurrencyRule | None:
    """The provider's limits for ``currency`` (upper case), or None if it is not accepted."""
    return CURRENCIES.get(currency)


def amount_problem(amount: int, currency: str) -> str | None:
    """Why the provider would refuse to charge ``amount`` in ``currency``, or None."""
    rule = rule_for(currency)
    if rule is None:
        return f"the payment provider does not accept {currency}"
    if amount < rule.minimum:
        return f"below the smallest charge the provider accepts ({rule.minimum} {currency})"
    if amount > rule.maximum:
        return f"above the largest charge the provider accepts ({rule.maximum} {currency})"
    return None
