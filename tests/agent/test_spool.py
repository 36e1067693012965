"""The spool's rules on a real SQLite file: drop oldest first, count every drop, never drop a
record that may be at the broker, keep numbering across reopen, restart it on a new boot."""

from __future__ import annotations

import sqlite3

import pytest

from agent.spool import SpoolDB, cap_victims


def body(seq: int, size: int = 100) -> bytes:
    return f'{{"seq":{seq}}}'.encode().ljust(size)


def fill(db: SpoolDB, start: int, n: int, size: int = 100) -> int:
    return db.append([body(s, size) for s in range(start, start + n)], start + n)


def seqs(path) -> list[int]:
    con = sqlite3.connect(path)
    rows = [
        int(b.split(b":")[1].split(b"}")[0])
        for (b,) in con.execute("SELECT body FROM records ORDER BY id")
    ]
    con.close()
    return rows


def test_cap_drops_oldest_first_and_counts_exactly(tmp_path):
    path = tmp_path / "s.db"
    db = SpoolDB(path, cap_bytes=1000, host_boot="b1")
    assert fill(db, 0, 10) == 0
    assert fill(db, 10, 3) == 3
    assert seqs(path) == list(range(3, 13))
    assert (db.depth, db.bytes, db.dropped, db.produced, db.next_seq) == (10, 1000, 3, 13, 13)
    assert fill(db, 13, 25) == 25  # more than the whole cap at once: only the newest stay
    assert seqs(path) == list(range(28, 38))
    assert db.stats().dropped == 28


def test_sent_records_are_never_dropped_and_come_first(tmp_path):
    path = tmp_path / "s.db"
    db = SpoolDB(path, cap_bytes=1000, host_boot="b1")
    fill(db, 0, 10)
    claim = db.claim(max_records=4, max_bytes=10_000, overhead=50)
    assert (claim.first_id, len(claim.bodies)) == (1, 4)
    assert fill(db, 10, 6) == 6
    assert seqs(path) == [0, 1, 2, 3, *range(10, 16)], "sent 0-3 kept, unsent 4-9 dropped"
    again = db.claim(max_records=4, max_bytes=10_000, overhead=50)
    assert again.bodies == claim.bodies, "unacknowledged records go out again first"
    db.ack(again)
    assert seqs(path) == list(range(10, 16))
    assert (db.depth, db.bytes, db.dropped) == (6, 600, 6)


def test_claim_respects_byte_limit(tmp_path):
    db = SpoolDB(tmp_path / "s.db", cap_bytes=10**6, host_boot="b1")
    fill(db, 0, 10)
    assert len(db.claim(10, max_bytes=350, overhead=40).bodies) == 3
    huge = SpoolDB(tmp_path / "h.db", cap_bytes=10**6, host_boot="b1")
    fill(huge, 0, 2, size=5000)
    assert len(huge.claim(10, max_bytes=1000, overhead=40).bodies) == 1, "at least one"
    assert db.claim(10, 10**6, 40) is not None
    empty = SpoolDB(tmp_path / "e.db", cap_bytes=10**6, host_boot="b1")
    assert empty.claim(10, 10**6, 40) is None


def test_reopen_keeps_numbers_and_counts_new_boot_restarts(tmp_path):
    path = tmp_path / "s.db"
    db = SpoolDB(path, cap_bytes=500, host_boot="b1")
    fill(db, 0, 8)
    db.close()
    again = SpoolDB(path, cap_bytes=500, host_boot="b1")
    assert (again.boot, again.next_seq, again.dropped, again.depth, again.bytes) == (
        db.boot,
        8,
        3,
        5,
        500,
    )
    again.close()
    rebooted = SpoolDB(path, cap_bytes=500, host_boot="b2")
    assert rebooted.boot != db.boot and rebooted.next_seq == 0
    assert rebooted.depth == 5 and rebooted.dropped == 3, "records of the old boot stay"


def test_unknown_format_is_refused(tmp_path):
    path = tmp_path / "s.db"
    SpoolDB(path, 500, "b1").close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = 99 WHERE key = 'format'")
    con.commit()
    con.close()
    from agent.spool import SpoolError

    with pytest.raises(SpoolError, match="unknown format"):
        SpoolDB(path, 500, "b1")


def test_cap_victims():
    rows = [(1, 100), (2, 50), (3, 200)]
    assert cap_victims(rows, 0) == (0, 0)
    assert cap_victims(rows, 100) == (1, 100)
    assert cap_victims(rows, 101) == (2, 150)
    assert cap_victims(rows, 10_000) == (3, 350)
