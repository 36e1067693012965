from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from gateway.serving.timestamp_keeper import TimestampKeeper, renewal_due


def test_renewal_is_due_in_the_second_half_of_the_lifetime():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    day = timedelta(days=1)
    assert not renewal_due(now + day, now, day)
    assert not renewal_due(now + timedelta(hours=13), now, day)
    assert renewal_due(now + timedelta(hours=11), now, day)
    assert renewal_due(now - day, now, day)


async def test_the_keeper_renews_a_timestamp_about_to_expire(repo):
    repo.refresh_timestamp(timedelta(minutes=1))
    version = repo.timestamp.signed.version
    async with TimestampKeeper(repo, interval=0.05, lifetime=timedelta(days=1)) as keeper:
        for _ in range(100):
            if keeper.renewals:
                break
            await asyncio.sleep(0.05)
    assert keeper.renewals == 1
    assert repo.timestamp.signed.version == version + 1
    assert repo.timestamp.signed.expires > datetime.now(UTC) + timedelta(hours=23)
