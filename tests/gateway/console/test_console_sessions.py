"""Session and CSRF rules, without a server: the clock is passed in."""

from __future__ import annotations

import pytest

from gateway.console.sessions import Role, Session, SessionLimits, SessionStore, role_for

ADMIN, VIEWER = b"a" * 43, b"v" * 43


def test_each_token_grants_its_role_and_nothing_else_grants_any():
    assert role_for("a" * 43, ADMIN, VIEWER) is Role.OPERATOR
    assert role_for("v" * 43 + "\n", ADMIN, VIEWER) is Role.VIEWER  # a pasted newline
    for wrong in ("", "a" * 42, "a" * 44, "v" * 42, "ä" * 43, "a" * 10_000, "a" * 42 + "\x00"):
        assert role_for(wrong, ADMIN, VIEWER) is None, wrong
    assert role_for("v" * 43, ADMIN, None) is None


def test_a_session_ends_when_idle_or_too_old_and_ids_are_unguessable():
    store = SessionStore(SessionLimits(idle_s=10, max_age_s=25, max_sessions=10))
    sid, session = store.create(Role.VIEWER, now=100.0)
    assert len(sid) == 43 and session.csrf != sid and len(session.csrf) == 43
    assert store.get(sid, 109.0) is session
    assert store.get(sid, 118.0) is session  # touched at 109: still within 10 s
    assert store.get(sid, 126.0) is None  # older than 25 s since sign-in
    assert len(store) == 0
    sid, _ = store.create(Role.VIEWER, now=0.0)
    assert store.get(sid, 10.5) is None  # idle for more than 10 s
    for bad in (None, "", sid, "x" * 43, "x" * 100_000):
        assert store.get(bad, 11.0) is None


def test_the_store_is_bounded_and_sign_out_ends_a_session():
    store = SessionStore(SessionLimits(max_sessions=3))
    ids = [store.create(Role.OPERATOR, now=float(i))[0] for i in range(5)]
    assert len(store) == 3
    assert store.get(ids[0], 5.0) is None and store.get(ids[1], 5.0) is None
    assert store.get(ids[4], 5.0) is not None
    store.end(ids[4])
    store.end("never-was")
    assert store.get(ids[4], 5.0) is None


@pytest.mark.parametrize("given", [None, "", "x", "é" * 43, "\udcff"])
def test_a_wrong_csrf_token_is_refused(given):
    session = Session(Role.OPERATOR, 0.0, 0.0)
    assert not session.csrf_ok(given)
    assert session.csrf_ok(session.csrf)
    assert Session(Role.OPERATOR, 0.0, 0.0).csrf != session.csrf
