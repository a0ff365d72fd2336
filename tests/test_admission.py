"""A build's hold on the server's build slots (:class:`boride.pipeline.Admission`): none once
one of its component calls has been pending for the grace, one again once the last has
answered; a call that answers within the grace keeps the slot."""

from __future__ import annotations

import asyncio

from boride import aio
from boride.pipeline import Admission


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_build_holds_no_slot_while_one_of_its_calls_is_pending() -> None:
    slots = asyncio.Semaphore(1)
    build = Admission(slots, grace=0)
    answer = [asyncio.Event(), asyncio.Event(), asyncio.Event()]

    async def call(i: int) -> None:
        async with build.awaiting():
            await answer[i].wait()

    async with build:
        assert build.held and slots.locked()
        calls = [aio.spawn(call(0)), aio.spawn(call(1))]
        await _settle()
        assert not build.held and not slots.locked()  # free for another build
        answer[0].set()
        await _settle()
        assert not build.held  # one call is still pending
        async with Admission(slots):  # another build holds the slot: this one waits for it
            answer[1].set()
            await _settle()
            assert not calls[1].done() and not build.held
            # a call beginning meanwhile: once the slot is got, it is given up again
            third = aio.spawn(call(2))
            await _settle()
        await _settle()
        assert not build.held and not slots.locked() and calls[1].done()
        answer[2].set()
        await third
        assert build.held and slots.locked()  # its last call answered: at work again
    assert not slots.locked()


async def test_a_call_answering_within_the_grace_keeps_the_slot() -> None:
    slots = asyncio.Semaphore(1)
    build = Admission(slots, grace=3600)
    async with build:
        async with build.awaiting():
            await _settle()
            assert build.held and slots.locked()
        assert build.held and slots.locked()  # never given up: nothing to wait for again
    assert not slots.locked()


async def test_a_call_pending_past_the_grace_gives_the_slot_up() -> None:
    slots = asyncio.Semaphore(1)
    build = Admission(slots, grace=0.05)
    answered = asyncio.Event()

    async def call() -> None:
        async with build.awaiting():
            await answered.wait()

    async with build:
        pending = aio.spawn(call())
        async with Admission(slots):  # another build gets the slot once the grace is over
            assert not build.held
            answered.set()
            await _settle()
            assert not pending.done()  # its build waits for a slot again
        await pending
        assert build.held
