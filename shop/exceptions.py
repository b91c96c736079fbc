"""What the task runtime knows of failures: three base classes the domains subclass.

The runtime in ``shop.messaging.runner`` catches these bases and never imports a domain's
own errors, so dependencies point downward::

    TransientError   worth retrying later: a provider or mail server that did not answer
    └── SlowDown     asked to wait (a 429, our own pacing): retry after ``retry_after``,
                     uncounted
    PermanentError   retrying cannot help: the step gives up at once
    BusyError        another copy holds this work right now: look again soon, uncounted
"""

from __future__ import annotations


class TransientError(Exception):
    """The outcome may differ next time (timeouts, 5xx, connection refused)."""


class SlowDown(TransientError):
    """Asked to wait ``retry_after`` seconds before trying again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """Retrying will not change the answer (a refusal, a misconfiguration)."""


class BusyError(Exception):
    """Another copy of the work holds it now; try again shortly."""


class InvariantBroken(Exception):
    """A rule that money or stock depends on did not hold: a bug or damaged data.

    Raised instead of ``assert`` (which ``python -O`` strips): the step stops before it
    moves anything, and the runner logs it with its traceback and retries it like any
    unexpected error, then gives up, which leaves the order for a person.
    """
