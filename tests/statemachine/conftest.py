"""The state machine's clock: every ``shop`` module reads ``driver.CLOCK`` while a test
that asks for ``clock`` runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.statemachine import driver


@pytest.fixture
def clock() -> Iterator[driver.Clock]:
    with driver.virtual_clock() as clock:
        yield clock
