"""A client of the Hub service over gRPC (asyncio) with mutual TLS.

The node authenticates with its unit's TLS certificate (``units/<UNIT>/tls.{crt,key}``)
and trusts only the exchange's CA. The hub's certificate names ``localhost``, ``hub``
and the loopback addresses (plus any host names given to ``exchange pki init
--hub-host``); TLS checks the host of ``--hub`` against them. When the hub is reached
under another name or address (a container network, a tunnel), ``--hub-name`` says
which name of its certificate to expect instead.

gRPC failures become :class:`HubCallFailed` with the status name, the hub's stable
error code (``[RULE-ID]`` at the start of its message) and whether trying again may
help (:attr:`HubCallFailed.retryable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import grpc

from exchange.errors import ExchangeError
from exchange.pki.tls import TlsMaterial
from exchange.wire.v1 import exchange_pb2 as pb
from exchange.wire.v1 import exchange_pb2_grpc as pb_grpc

__all__ = [
    "RETRYABLE",
    "HubCallFailed",
    "HubClient",
    "StreamedCalls",
    "acknowledge_stream",
    "submit_stream",
]

#: statuses worth trying again: the hub or the network is away, or was slow
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
#: big enough for the hub's largest envelope (50 MB body plus overhead)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CODE = re.compile(r"^\[([A-Z0-9-]+)\]\s*")


class HubCallFailed(ExchangeError):
    """A call to the hub failed: ``status`` is the gRPC status name.

    Non-retryable refusals (a forged sender, an unknown delivery) exit with 3, like
    any refusal; an unreachable hub exits with 1.
    """

    def __init__(self, status: grpc.StatusCode, details: str) -> None:
        self.status = status
        self.details = details
        match = _CODE.match(details)
        self.code = match.group(1) if match else f"GRPC-{status.name}"
        self.reason = details[match.end() :] if match else details
        self.retryable = status in RETRYABLE
        self.exit_code = 1 if self.retryable else 3
        super().__init__(f"the hub answered {status.name}: {details or 'no details'}")

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> HubCallFailed:
        """The failure a gRPC error reports."""
        return cls(error.code(), error.details() or "")


class _Tagged(Protocol):
    tag: int


Request = TypeVar("Request", bound=_Tagged)
Answer = TypeVar("Answer")


class StreamedCalls(Generic[Request, Answer]):
    """Requests over one long-lived stream (SubmitStream, AcknowledgeStream), by tag.

    ``await calls.call(request)`` queues the request for the open stream (opening it
    first if need be) and returns the answer with its tag; many calls may wait at once.
    Whatever queued while the previous stream message was being sent goes in the next
    one (``pack``), up to ``max_items`` requests and ``max_bytes`` of them (a larger
    request goes alone); the hub's messages carry several answers (``unpack``).
    The hub answers a failed request with its unary status, raised here as
    :class:`HubCallFailed`; when the stream itself breaks, every waiting call fails
    with the stream's status (retryable when the hub is away), and the next call
    opens a new stream.
    """

    def __init__(
        self,
        open_stream: Callable[..., Any],
        *,
        pack: Callable[[list[Request]], Any],
        unpack: Callable[[Any], Iterable[Answer]],
        size: Callable[[Request], int] = lambda _request: 64,
        timeout: float,
        max_items: int = 256,
        max_bytes: int = 960 * 1024,
    ) -> None:
        self._open_stream = open_stream
        self._pack = pack
        self._unpack = unpack
        self._size = size
        self.timeout = timeout
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._tags = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self._queued: deque[Request | None] = deque()
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def call(self, request: Request) -> Answer:
        if self._reader is None or self._reader.done():
            self._open()
        tag = next(self._tags)
        request.tag = tag
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[tag] = answer
        self._queued.append(request)
        self._wake.set()
        try:
            async with asyncio.timeout(self.timeout):
                response = await answer
        except TimeoutError:
            raise HubCallFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer on the stream within {self.timeout:g} s",
            ) from None
        finally:
            self._waiting.pop(tag, None)
        answered: Any = response
        if answered.HasField("failure"):
            failure = answered.failure
            status = grpc.StatusCode[failure.status] if failure.status in _STATUS else None
            raise HubCallFailed(
                status or grpc.StatusCode.UNKNOWN, f"[{failure.code}] {failure.message}"
            )
        return response

    def _open(self) -> None:
        queued, wake = deque[Request | None](), asyncio.Event()
        self._queued, self._wake = queued, wake

        async def batches() -> AsyncIterator[Any]:
            while True:
                while not queued:
                    wake.clear()
                    await wake.wait()
                batch: list[Request] = []
                size = 0
                while queued and len(batch) < self.max_items:
                    request = queued[0]
                    if request is None:  # closed: send what is left, then end the stream
                        if batch:
                            yield self._pack(batch)
                        return
                    size += self._size(request)
                    if batch and size > self.max_bytes:
                        break
                    queued.popleft()
                    batch.append(request)
                yield self._pack(batch)

        self._reader = asyncio.create_task(self._read(self._open_stream(batches())))

    async def _read(self, stream: Any) -> None:
        failure = HubCallFailed(grpc.StatusCode.UNAVAILABLE, "the hub ended the stream")
        waiting = self._waiting
        try:
            async for answers in stream:
                for response in self._unpack(answers):
                    future = waiting.pop(response.tag, None)  # type: ignore[attr-defined]
                    if future is not None and not future.done():
                        future.set_result(response)
        except grpc.aio.AioRpcError as error:
            failure = HubCallFailed.of(error)
        finally:
            stream.cancel()
            # whoever still waits will not be answered on this stream
            for future in waiting.values():
                if not future.done():
                    future.set_exception(failure)
            waiting.clear()

    async def close(self) -> None:
        self._queued.append(None)
        self._wake.set()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._reader = None


_STATUS = frozenset(code.name for code in grpc.StatusCode)


def submit_stream(
    stub: pb_grpc.HubStub, *, timeout: float
) -> StreamedCalls[pb.SubmitRequest, pb.SubmitResponse]:
    """Submissions over the hub's SubmitStream."""
    return StreamedCalls(
        stub.SubmitStream,
        pack=lambda requests: pb.SubmitRequests(requests=requests),
        unpack=lambda answers: answers.responses,
        size=lambda request: request.ByteSize() + 8,  # with its tag and length in the list
        timeout=timeout,
    )


def acknowledge_stream(
    stub: pb_grpc.HubStub, *, timeout: float
) -> StreamedCalls[pb.AcknowledgeRequest, pb.AcknowledgeResponse]:
    """Acknowledgements over the hub's AcknowledgeStream (kept in order)."""
    return StreamedCalls(
        stub.AcknowledgeStream,
        pack=lambda requests: pb.AcknowledgeRequests(requests=requests),
        unpack=lambda answers: answers.responses,
        timeout=timeout,
    )


class HubClient:
    """One channel to the hub for one unit (the node's own, or a sender's for ``--hub``)."""

    def __init__(
        self,
        target: str,
        tls: TlsMaterial,
        *,
        server_name: str | None = None,
        timeout: float = 15.0,
        streamed: bool = False,
    ) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.root_ca_pem,
            private_key=tls.private_key_pem,
            certificate_chain=tls.certificate_chain_pem,
        )
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Keep the long-lived Subscribe stream alive through NATs and idle proxies;
            # the hub permits pings every 10 s.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Reconnect quickly after a hub restart; the node adds its own backoff.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.target = target
        self.timeout = timeout
        self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.HubStub(self._channel)
        #: submit and acknowledge over long-lived streams (a running node) rather than
        #: a call each (a one-off command)
        self.streamed = streamed
        self._submits = submit_stream(self._stub, timeout=timeout)
        self._acks = acknowledge_stream(self._stub, timeout=timeout)

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (ends any open stream)."""
        await self._submits.close()
        await self._acks.close()
        await self._channel.close()

    async def submit(self, envelope: bytes) -> pb.Evidence:
        """Submit a sealed envelope; the hub's evidence (accepted or refused)."""
        if self.streamed and len(envelope) <= self._submits.max_bytes:
            # a larger one goes alone, as a call of its own: should the hub find it too
            # large for a message, it fails alone, not every request on the stream
            return (await self._submits.call(pb.SubmitRequest(envelope=envelope))).evidence
        try:
            response = await self._stub.Submit(
                pb.SubmitRequest(envelope=envelope), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        return response.evidence

    async def forward(self, envelope: bytes) -> pb.Evidence:
        """Hand a forwarding envelope to the hub; its evidence."""
        try:
            response = await self._stub.Forward(
                pb.ForwardRequest(envelope=envelope), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        return response.evidence

    async def acknowledge(
        self, *, message_id: str, sequence: int, read: bool, on_behalf_of: str = ""
    ) -> pb.Evidence:
        """Tell the hub a delivery reached the node (or a person, ``read``)."""
        request = pb.AcknowledgeRequest(
            message_id=message_id, sequence=sequence, read=read, on_behalf_of=on_behalf_of
        )
        if self.streamed:
            return (await self._acks.call(request)).evidence
        try:
            response = await self._stub.Acknowledge(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        return response.evidence

    async def subscribe(
        self, cursor: int = 0, *, on_open: Callable[[], None] | None = None
    ) -> AsyncIterator[pb.Delivery]:
        """The deliveries for this node's unit (and the units it relays), as they come.

        ``on_open`` is called once the stream is established with the hub.
        """
        call = self._stub.Subscribe(pb.SubscribeRequest(cursor=cursor))
        try:
            await call.wait_for_connection()
            if on_open is not None:
                on_open()
            async for message in call:
                for delivery in message.deliveries:
                    yield delivery
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        finally:
            call.cancel()

    async def get_directory(self) -> pb.SignedDirectory:
        """The hub-signed directory (units, status, channels, relays, certificates)."""
        try:
            return await self._stub.GetDirectory(pb.GetDirectoryRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None

    async def get_evidences(self, message_id: str) -> list[pb.Evidence]:
        """Every evidence the hub signed about a message of ours (sent or received)."""
        try:
            response = await self._stub.GetEvidences(
                pb.GetEvidencesRequest(message_id=message_id), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        return list(response.evidences)

    async def get_tree_head(self) -> pb.SignedTreeHead:
        """The hub's newest signed tree head of the exchange log."""
        try:
            return await self._stub.GetTreeHead(pb.GetTreeHeadRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """The proof that log entry ``index`` is in the tree of ``tree_size`` entries."""
        try:
            proof = await self._stub.GetInclusionProof(
                pb.GetInclusionProofRequest(index=index, tree_size=tree_size), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        return list(proof.hashes)

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The proof that the tree of ``old_size`` entries is a prefix of ``new_size``."""
        try:
            proof = await self._stub.GetConsistencyProof(
                pb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size),
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        return list(proof.hashes)

    async def ask_permission(
        self, message_id: str, recipients: list[str], purpose: str, reason: str
    ) -> pb.Evidence:
        """Ask a message's provider, through the hub, for permission (e.g. an H2 forward)."""
        try:
            response = await self._stub.RequestPermission(
                pb.PermissionRequest(
                    message_id=message_id, recipients=recipients, purpose=purpose, reason=reason
                ),
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        return response.evidence

    async def answer_permission(self, request: pb.GrantPermissionRequest) -> pb.Evidence:
        """As the provider, grant (a signed permission) or refuse a permission."""
        try:
            response = await self._stub.GrantPermission(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        return response.evidence

    async def erase(self, message_id: str, reason: str) -> pb.Evidence:
        """As the hub's administrator, erase a stored message (the log keeps its record)."""
        try:
            response = await self._stub.Erase(
                pb.EraseRequest(message_id=message_id, reason=reason), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise HubCallFailed.of(error) from None
        return response.evidence
