"""Request streams (SubmitStream, AcknowledgeStream): many requests in flight on one call.

A node with several messages to submit or deliveries to acknowledge keeps one stream
open instead of making a unary call each: a message on an open HTTP/2 stream costs
gRPC a fraction of a call, and one stream message carries every request the node had
ready at once. The hub takes the requests in the order they arrive, starts each at
once (so they reach the group-commit writer in that order and share its commits), and
answers each by its tag as soon as it is done, the answers ready together in one
stream message; a failed request is answered with what its unary call's status would
have said, and the stream goes on.

At most ``window`` requests of a stream are in flight: beyond that the hub stops
reading, and HTTP/2 flow control holds the sender back. When the hub stops, it stops
reading every stream, answers what is in flight, and ends the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

Request = TypeVar("Request")
Response = TypeVar("Response")
Batch = TypeVar("Batch")
Answers = TypeVar("Answers")


class RequestStreams:
    """The hub's open request streams: answers them, and stops reading them all on stop."""

    def __init__(self, window: int = 256) -> None:
        self.window = window
        self._readers: set[asyncio.Task[None]] = set()
        self._stopping = False

    def stop_reading(self) -> None:
        """Read no more requests; what is in flight is answered, then the streams end."""
        self._stopping = True
        for reader in list(self._readers):
            reader.cancel()

    async def answer(
        self,
        batches: AsyncIterator[Batch],
        unpack: Callable[[Batch], Iterable[Request]],
        handle: Callable[[Request], Awaitable[Response]],
        pack: Callable[[list[Response]], Answers],
    ) -> AsyncIterator[Answers]:
        """Run ``handle`` on each request as it arrives; yield the answers as they are ready.

        ``unpack`` gives the requests of a stream message, ``pack`` makes one of
        answers. ``handle`` must answer every request (a failure is an answer too): an
        exception escaping it ends the stream.
        """
        answers: asyncio.Queue[Response | BaseException | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.window)
        in_flight: set[asyncio.Task[None]] = set()

        async def run(request: Request) -> None:
            try:
                answers.put_nowait(await handle(request))
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # reported on the stream, which then ends
                answers.put_nowait(error)
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for batch in batches:
                    for request in unpack(batch):
                        await slots.acquire()
                        task = asyncio.create_task(run(request))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
            except asyncio.CancelledError:
                pass  # the hub is stopping or the call ended: answer what is in flight
            finally:
                # asyncio.wait, unlike gather, leaves the work alone if this is cancelled
                with contextlib.suppress(asyncio.CancelledError):
                    if in_flight:
                        await asyncio.wait(set(in_flight))

        if self._stopping:
            return
        reader = asyncio.create_task(read())
        # the end of the answers, however the reader ends (even cancelled before it ran)
        reader.add_done_callback(lambda _reader: answers.put_nowait(None))
        self._readers.add(reader)
        try:
            ended = False
            while not ended:
                ready = [await answers.get()]
                while not answers.empty():  # everything answered meanwhile goes together
                    ready.append(answers.get_nowait())
                done: list[Response] = []
                for answer in ready:
                    if answer is None:
                        ended = True
                        break
                    if isinstance(answer, BaseException):
                        raise answer
                    done.append(answer)
                if done:
                    yield pack(done)
        finally:
            self._readers.discard(reader)
            reader.cancel()
            for task in list(in_flight):
                task.cancel()
