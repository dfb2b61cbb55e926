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

import re
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import grpc

from exchange.errors import ExchangeError
from exchange.pki.tls import TlsMaterial
from exchange.wire.v1 import exchange_pb2 as pb
from exchange.wire.v1 import exchange_pb2_grpc as pb_grpc

__all__ = ["RETRYABLE", "HubCallFailed", "HubClient"]

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


class HubClient:
    """One channel to the hub for one unit (the node's own, or a sender's for ``--hub``)."""

    def __init__(
        self,
        target: str,
        tls: TlsMaterial,
        *,
        server_name: str | None = None,
        timeout: float = 15.0,
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
        """Close the channel (ends any open Subscribe stream)."""
        await self._channel.close()

    async def submit(self, envelope: bytes) -> pb.Evidence:
        """Submit a sealed envelope; the hub's evidence (accepted or refused)."""
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
        try:
            response = await self._stub.Acknowledge(
                pb.AcknowledgeRequest(
                    message_id=message_id,
                    sequence=sequence,
                    read=read,
                    on_behalf_of=on_behalf_of,
                ),
                timeout=self.timeout,
            )
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
            async for delivery in call:
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
