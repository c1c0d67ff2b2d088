"""The WhatsApp Cloud API stand-in's own behaviour that the channel tests lean on."""
import asyncio

from devkit.whatsapp import WhatsAppStandIn


async def test_settle_returns_when_its_pushes_ended_before_their_clean_up_ran():
    """A status push that has finished while its done callback (which forgets it) is still queued: on Python 3.12
    gathering finished tasks returns without yielding to the loop, and settle() once spun here forever (channel
    tests hung on PostgreSQL, where a push more often finished just before settle looked)."""
    api = WhatsAppStandIn()
    finished = asyncio.get_running_loop().create_future()
    api._pending.add(finished)  # type: ignore[arg-type]
    finished.add_done_callback(api._pending.discard)  # type: ignore[arg-type]
    finished.set_result(None)  # its callback is now scheduled, not run
    await asyncio.wait_for(api.settle(), timeout=5)
    assert not api._pending
