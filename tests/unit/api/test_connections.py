"""Connection limits: which source a connection counts under, and the counts themselves."""

from __future__ import annotations

import pytest

from opencas.api.connections import ConnectionCounter, source_of
from opencas.config.availability import ConnectionLimits


@pytest.mark.parametrize(
    ("peername", "source"),
    [
        (("192.0.2.7", 4433), "192.0.2.7"),
        (("::ffff:192.0.2.7", 4433, 0, 0), "192.0.2.7"),
        (("2001:db8:1:2:3:4:5:6", 4433, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::1", 4433, 0, 0), "2001:db8:1:2::/64"),
        (("fe80::1%eth0", 4433, 0, 2), "fe80::/64"),
        (None, "unknown"),
        ("/run/cas.sock", "unknown"),
        (("not an address", 1), "unknown"),
    ],
)
def test_source_of(peername: object, source: str) -> None:
    assert source_of(peername) == source


def test_counter_limits_each_source_and_the_total() -> None:
    counter = ConnectionCounter(ConnectionLimits(max_connections=3, max_connections_per_source=2))
    assert counter.admit("a")
    assert counter.admit("a")
    assert not counter.admit("a")
    assert counter.admit("b")
    assert not counter.admit("c")  # the total is reached
    counter.release("a")
    assert counter.admit("c")
    assert not counter.admit("a")
    counter.release("b")
    counter.release("c")
    counter.release("a")
    assert counter.total == 0
    assert not counter.by_source
