"""The presence-expiry rule (no trio, times given): who is reachable, whose presences
expire."""

from __future__ import annotations

from engine.reachability import (
    ReachabilityLedger,
    counts_for_reachability,
    report_interval,
    sweep_interval,
)

TIMEOUT = 120.0
START = 1000.0


def ledger() -> ReachabilityLedger:
    return ReachabilityLedger(timeout=TIMEOUT, started_at=START)


def test_the_server_start_counts_as_a_sign_of_life() -> None:
    rule = ledger()
    assert rule.is_reachable("alan", START + TIMEOUT - 0.001)
    assert rule.expired(["alan"], START + TIMEOUT - 0.001) == []


def test_expiry_is_exactly_at_the_timeout() -> None:
    rule = ledger()
    rule.touch("alan", 2000.0)
    assert rule.is_reachable("alan", 2000.0 + TIMEOUT - 0.001)
    assert not rule.is_reachable("alan", 2000.0 + TIMEOUT)
    assert rule.expired(["alan"], 2000.0 + TIMEOUT) == ["alan"]


def test_an_open_session_keeps_a_user_reachable_however_long() -> None:
    rule = ledger()
    rule.session_opened("alan")
    assert rule.is_reachable("alan", START + 100 * TIMEOUT)


def test_the_timeout_runs_from_the_close_of_the_last_session() -> None:
    rule = ledger()
    rule.session_opened("alan")
    rule.session_opened("alan")
    rule.session_closed("alan", 5000.0)
    assert rule.is_reachable("alan", 5000.0 + 10 * TIMEOUT)  # one session still open
    rule.session_closed("alan", 6000.0)
    assert rule.is_reachable("alan", 6000.0 + TIMEOUT - 0.001)
    assert not rule.is_reachable("alan", 6000.0 + TIMEOUT)


def test_reconnecting_within_the_timeout_keeps_the_presence() -> None:
    rule = ledger()
    rule.session_opened("alan")
    rule.session_closed("alan", 2000.0)
    rule.session_opened("alan")  # back before 2000 + TIMEOUT
    rule.session_closed("alan", 2100.0)
    assert rule.expired(["alan"], 2000.0 + TIMEOUT) == []
    assert rule.expired(["alan"], 2100.0 + TIMEOUT) == ["alan"]


def test_a_request_or_a_new_presence_renews_the_timeout() -> None:
    rule = ledger()
    rule.touch("alan", 2000.0)
    rule.touch("alan", 2100.0)
    assert rule.is_reachable("alan", 2000.0 + TIMEOUT)


def test_only_the_users_given_are_considered_and_each_on_its_own() -> None:
    rule = ledger()
    rule.touch("ada", 2000.0)
    rule.session_opened("bo")
    now = START + TIMEOUT + 1
    assert rule.expired(["alan", "ada", "bo"], now) == ["alan"]
    assert rule.expired([], now) == []


def test_a_user_never_seen_expires_a_timeout_after_the_start() -> None:
    # what happens to a user whom only its org or the admin acted for: the gateway never
    # tells the ledger about them (``counts_for_reachability``)
    rule = ledger()
    assert rule.expired(["alan"], START + TIMEOUT) == ["alan"]


def test_only_a_users_own_token_counts() -> None:
    assert counts_for_reachability("user")
    for kind in ("org", "admin", "visitor"):
        assert not counts_for_reachability(kind)


def test_the_sweep_runs_often_enough_and_not_too_often() -> None:
    assert sweep_interval(120.0) == 1.0  # a long timeout: once a second
    assert sweep_interval(2.0) == 0.5  # a quarter of a short one
    assert sweep_interval(0.01) == 0.05  # never a busy loop


# -- across the nodes of a cluster ----------------------------------------------------


def test_a_report_from_another_node_keeps_a_user_reachable_for_the_timeout() -> None:
    rule = ledger()
    rule.touch("alan", 2000.0)
    rule.reported(["alan"], 2100.0)  # a replica holds Alan's session
    assert rule.expired(["alan"], 2000.0 + TIMEOUT) == []
    assert rule.expired(["alan"], 2100.0 + TIMEOUT - 0.001) == []
    # the reports stop (the session there closed): the timeout runs from the last one
    assert rule.expired(["alan"], 2100.0 + TIMEOUT) == ["alan"]


def test_reports_at_the_report_interval_keep_a_user_reachable_indefinitely() -> None:
    rule = ledger()
    interval = report_interval(TIMEOUT)
    assert interval <= TIMEOUT / 4
    now = START
    for _ in range(100):  # 100 reports, a late one each time (half an interval)
        now += interval * 1.5
        assert rule.expired(["alan"], now) == []
        rule.reported(["alan"], now)


def test_a_report_never_makes_another_user_reachable() -> None:
    rule = ledger()
    rule.reported(["alan"], START + TIMEOUT)
    assert rule.expired(["alan", "ada"], START + TIMEOUT + 1) == ["ada"]


def test_what_a_replica_reports_is_every_user_reachable_through_it() -> None:
    rule = ledger()
    rule.session_opened("ada")  # a session: reachable however long
    rule.touch("alan", 2000.0)  # a request: reachable for the timeout
    rule.session_opened("grace")
    rule.session_closed("grace", 1950.0)  # closed: reachable for the timeout after
    assert rule.reachable_users(2000.0) == ["ada", "alan", "grace"]
    assert rule.reachable_users(1950.0 + TIMEOUT) == ["ada", "alan"]
    assert rule.reachable_users(2000.0 + TIMEOUT) == ["ada"]


def test_a_reported_user_expires_a_timeout_after_it_was_last_seen_not_after_the_report() -> None:
    replica, primary = ledger(), ledger()
    replica.touch("ada", 2000.0)  # Ada's last request on the replica
    ages = replica.reachable_ages(2000.0 + TIMEOUT - 10)
    assert ages == {"ada": TIMEOUT - 10}
    primary.reported(ages, 2000.0 + TIMEOUT - 10)
    # on the primary she expires when she would have on the replica, not a timeout later
    assert primary.is_reachable("ada", 2000.0 + TIMEOUT - 0.001)
    assert not primary.is_reachable("ada", 2000.0 + TIMEOUT)
    # an older report never takes a newer sign of life back
    primary.touch("ada", 2100.0)
    primary.reported({"ada": 50.0}, 2110.0)
    assert primary.is_reachable("ada", 2100.0 + TIMEOUT - 0.001)


def test_an_open_session_is_reported_as_seen_now() -> None:
    replica = ledger()
    replica.session_opened("ada")
    assert replica.reachable_ages(START + 10 * TIMEOUT) == {"ada": 0.0}


def test_users_not_seen_within_the_timeout_are_forgotten() -> None:
    rule = ledger()
    rule.touch("ada", 2000.0)
    rule.reported({"alan": 0.0}, 2050.0)
    rule.session_opened("grace")
    rule.touch("grace", 1900.0)
    assert rule.forget(2000.0 + TIMEOUT) == 1  # Ada only
    assert not rule.is_reachable("ada", 2000.0 + TIMEOUT)
    assert rule.reachable_users(2000.0 + TIMEOUT) == ["alan", "grace"]
