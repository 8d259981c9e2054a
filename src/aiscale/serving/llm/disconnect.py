"""Work that ends when the client goes away: a generation nobody will read is cancelled.

An ASGI server tells the app that the client closed its connection only through
``receive()`` returning ``http.disconnect`` (uvicorn's ``send`` then drops what it is given
without a word). ``until_disconnect`` runs the request's work in a task of its own beside a
watcher on ``receive``; the first to finish wins. When the client leaves first, the work is
cancelled, its ``finally`` blocks run to the end (closing the engine's stream, which makes
llama.cpp and vLLM free the slot, and settling the request's tokens), and
``ClientDisconnected`` is raised. Only call it once the request body has been read whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiscale.serving.http import Receive

__all__ = ["ClientDisconnected", "until_disconnect"]

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed its connection before its answer was complete.

    Not an ``AiscaleError``: there is nobody left to answer, so no status maps to it."""


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """``await work``, unless the client disconnects first: then ``work`` is cancelled
    (and awaited, so its cleanup has run) and ``ClientDisconnected`` is raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server stops this request: stop both
        task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
        raise
    if task.done():
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        return task.result()
    watcher.exception()  # retrieved: a failing ``receive`` counts as the client gone
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    raise ClientDisconnected("the client disconnected")
