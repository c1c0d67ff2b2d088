"""API keys as the operator's commands meet them, in process (the CLI tests run the same through `rastau`): the
lifetimes accepted, a key's status over time, and what revoking says when it cannot."""
from __future__ import annotations

import datetime as dt

import pytest

from core.errors import Conflict, InvalidValue, NotFound
from core.services import api_keys


@pytest.mark.parametrize("text,lifetime", [("90d", dt.timedelta(days=90)), (" 12H ", dt.timedelta(hours=12)),
                                           ("3660d", dt.timedelta(days=3660))])
def test_a_lifetime_is_whole_days_or_hours(text, lifetime):
    assert api_keys.parse_lifetime(text) == lifetime


@pytest.mark.parametrize("text", ["3w", "1.5d", "0d", "", "90", "3661d"])
def test_any_other_lifetime_is_refused_with_an_example(text):
    with pytest.raises(InvalidValue, match="like 90d or 12h"):
        api_keys.parse_lifetime(text)


async def test_a_key_is_live_then_expired_then_revoked_once(ctx, clinic_world):
    clinic_id = clinic_world.clinic.id
    new = await api_keys.create_api_key(ctx, clinic_id, ["webcam"], label="desk 3", expires_in=dt.timedelta(days=1))
    [listed] = await api_keys.list_api_keys(ctx, clinic_id)
    assert (listed.prefix, listed.label, listed.status(ctx.clock.now())) == (new.principal.key_prefix, "desk 3", "live")

    ctx.clock.advance(dt.timedelta(days=1))
    assert listed.status(ctx.clock.now()) == "expired"

    revoked = await api_keys.revoke_api_key(ctx, new.key)  # the whole key pasted: reduced to its prefix
    assert (revoked.prefix, revoked.status(ctx.clock.now())) == (new.principal.key_prefix, "revoked")
    with pytest.raises(Conflict, match="already revoked"):
        await api_keys.revoke_api_key(ctx, new.principal.key_prefix)


async def test_revoking_or_listing_what_does_not_exist_says_where_to_look(ctx, clinic_world):
    with pytest.raises(NotFound, match="rastau list-api-keys"):
        await api_keys.revoke_api_key(ctx, "0123456789abcdef")
    with pytest.raises(NotFound):
        await api_keys.list_api_keys(ctx, clinic_world.clinic.id + 1000)
