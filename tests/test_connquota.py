"""The per-address count of connections (``gateway/connquota.py``) as bookkeeping: the
default limit, which peers are counted, and that a slot is given back once. The real
process's behaviour is in tests/test_edge_process.py."""

from __future__ import annotations

from gateway import connquota
from gateway.connquota import AddressSlots, per_address_limit
from gateway.settings import networks


def test_the_default_is_a_tenth_of_the_cap_but_not_below_256_or_the_cap() -> None:
    assert per_address_limit("auto", 20_000) == 2_000
    assert per_address_limit("auto", 1_000) == 256
    assert per_address_limit("auto", 100) == 100
    assert per_address_limit(7, 100) == 7
    assert per_address_limit(None, 100) is None


def test_a_trusted_proxy_is_not_counted_per_address() -> None:
    slots = AddressSlots(2, networks("10.0.0.0/8"))
    assert slots.key("10.1.2.3") is None
    assert slots.key("::ffff:10.1.2.3") is None  # a dual-stack socket's view of it
    assert slots.key("192.0.2.1") == "192.0.2.1"
    assert AddressSlots(None).key("192.0.2.1") is None  # no limit: nothing counted


def test_an_address_is_full_at_its_limit_and_forgotten_when_its_last_slot_goes() -> None:
    slots = AddressSlots(2)
    first, second = slots.take("192.0.2.1"), slots.take("192.0.2.1")
    assert slots.full("192.0.2.1") and not slots.full("192.0.2.2")
    first.release()
    first.release()  # once only
    assert not slots.full("192.0.2.1") and slots.held() == 1
    second.release()
    assert slots.held() == 0


def test_a_connection_that_became_a_session_gives_its_slot_back_once() -> None:
    slots = AddressSlots(1)
    slot = slots.take("192.0.2.1")
    connquota.hold(slot)
    connquota.became_session()
    assert not slots.full("192.0.2.1")
    connquota.became_session()  # nothing held any more
    slot.release()  # the connection's end: already given back
    assert slots.held() == 0
