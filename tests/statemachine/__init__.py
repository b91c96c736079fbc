"""Issue 18: a hypothesis state machine that tries the interleavings of the real use cases.

``driver.py`` is the only module here that imports shop's internals; the machine
(``test_statemachine.py``), its checks (``checks.py``) and the replays of what it found
(``test_regressions.py``) speak to the shop through it alone.
"""
