"""The hub's gRPC shell: mutual TLS, one interceptor, the servicer, health, reflection.

The caller's unit comes from its TLS client certificate only (checked against the
CA, the CRL and the clock by :class:`~exchange.pki.tls.PeerVerifier`). One
interceptor maps the exception family to gRPC status codes and binds a request id
and the caller to the log context; the servicer methods only translate between
protobuf and :class:`~exchange.hub.service.HubService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import random
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from exchange.core.clock import Clock
from exchange.core.evidence import DIRECTORY_PREFIX, HUB_UNIT, EvidenceSigner
from exchange.core.keys import Directory, key_id
from exchange.core.policy import Policy, load_policy
from exchange.core.registry import Registry
from exchange.core.suites import suites_supported
from exchange.core.vocab import PartnerStatus
from exchange.errors import (
    BadSignature,
    CertificateExpired,
    CertificateRevoked,
    DecryptionFailed,
    DigestMismatch,
    EnvelopeError,
    ExchangeError,
    HeaderBodyMismatch,
    InputError,
    MalformedEnvelope,
    SuiteError,
    SuiteTooWeak,
    UnknownSigner,
)
from exchange.hub.errors import (
    CallerRevoked,
    EnvelopeTooLarge,
    ForwardRefused,
    NotAuthenticated,
    NotAvailable,
    ReplayConflict,
    SenderMismatch,
    StoreUnavailable,
    UnknownDelivery,
)
from exchange.hub.service import HubService, PendingDelivery, Subscription
from exchange.hub.streams import RequestStreams
from exchange.logs import get_logger
from exchange.pki import load_directory, load_hub_keyring
from exchange.pki.errors import UnsuitableCertificate, UntrustedCertificate
from exchange.pki.layout import PkiLayout
from exchange.pki.tls import PeerVerifier, load_tls_material
from exchange.store.database import make_engine, upgrade
from exchange.wire.v1 import exchange_pb2 as pb
from exchange.wire.v1 import exchange_pb2_grpc as pb_grpc

log = get_logger("exchange.hub.server")

#: the unit authenticated for the current call (set by the interceptor)
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller")

#: exception kind -> gRPC status, most specific first (one table, one place)
STATUS_FOR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (EnvelopeTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (NotAvailable, grpc.StatusCode.UNIMPLEMENTED),
    (ReplayConflict, grpc.StatusCode.ALREADY_EXISTS),
    (SenderMismatch, grpc.StatusCode.PERMISSION_DENIED),
    (CallerRevoked, grpc.StatusCode.PERMISSION_DENIED),
    (CertificateRevoked, grpc.StatusCode.PERMISSION_DENIED),
    (CertificateExpired, grpc.StatusCode.PERMISSION_DENIED),
    (UnsuitableCertificate, grpc.StatusCode.PERMISSION_DENIED),
    (ForwardRefused, grpc.StatusCode.PERMISSION_DENIED),
    (NotAuthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (UntrustedCertificate, grpc.StatusCode.UNAUTHENTICATED),
    (UnknownSigner, grpc.StatusCode.UNAUTHENTICATED),
    (SuiteTooWeak, grpc.StatusCode.FAILED_PRECONDITION),
    (UnknownDelivery, grpc.StatusCode.FAILED_PRECONDITION),
    (MalformedEnvelope, grpc.StatusCode.INVALID_ARGUMENT),
    (BadSignature, grpc.StatusCode.INVALID_ARGUMENT),
    (DigestMismatch, grpc.StatusCode.INVALID_ARGUMENT),
    (HeaderBodyMismatch, grpc.StatusCode.INVALID_ARGUMENT),
    (DecryptionFailed, grpc.StatusCode.INVALID_ARGUMENT),
    (SuiteError, grpc.StatusCode.INVALID_ARGUMENT),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (EnvelopeError, grpc.StatusCode.INVALID_ARGUMENT),
    (ExchangeError, grpc.StatusCode.FAILED_PRECONDITION),
)

#: trailing metadata key carrying the stable error code (rule or check id)
ERROR_CODE_KEY = "exchange-error-code"


def status_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an error of the family (INTERNAL for anything else)."""
    for kind, status in STATUS_FOR:
        if isinstance(error, kind):
            return status
    return grpc.StatusCode.INTERNAL


#: what a stream answers for a request the hub failed on unexpectedly (a bug; logged)
UNEXPECTED = pb.CallFailure(
    status=grpc.StatusCode.INTERNAL.name,
    code="HUB-INTERNAL",
    message="the hub failed on this request; it is logged, try again",
)


def failure_for(error: ExchangeError) -> pb.CallFailure:
    """What a stream answers for a request that failed: its unary call's status and code."""
    log.info("request refused", code=error.code, reason=error.message)
    return pb.CallFailure(status=status_for(error).name, code=error.code, message=error.message)


class CallerIdentity:
    """Maps a call's TLS peer certificate to its unit, caching the CA signature check."""

    def __init__(self, verifier: PeerVerifier, clock: Clock, registry: Registry) -> None:
        self.verifier = verifier
        self.clock = clock
        self.registry = registry
        self._known: dict[bytes, tuple[str, x509.Certificate]] = {}

    def unit(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The caller's unit; a relayed unit has no connection of its own."""
        unit = self._certified_unit(context)
        entry = self.registry.get(unit)
        if entry is not None and entry.status is PartnerStatus.RELAYED:
            raise CallerRevoked(
                f"{unit} has no direct connection: its exchanges go through {entry.relay}"
            )
        return unit

    def _certified_unit(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        pems = list(context.auth_context().get("x509_pem_cert", ()))
        if not pems:
            raise NotAuthenticated("the call carries no TLS client certificate")
        pem = pems[0]
        now = self.clock.now()
        known = self._known.get(pem)
        try:
            if known is None:
                certificate = x509.load_pem_x509_certificate(pem)
                unit = self.verifier.check(certificate, now)
                self._known[pem] = (unit, certificate)
                return unit
            unit, certificate = known
            # the CA signature was checked once; validity and revocation every call
            return self.verifier.check(certificate, now) if self._stale(certificate) else unit
        except (CertificateRevoked, CertificateExpired, UnsuitableCertificate) as error:
            raise CallerRevoked(error.message) from None

    def _stale(self, certificate: x509.Certificate) -> bool:
        now = self.clock.now()
        return (
            certificate.serial_number in self.verifier.revocations
            or not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc
        )


class ExchangeInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates Hub calls, binds log context, maps errors to status codes."""

    def __init__(self, identity: CallerIdentity) -> None:
        self.identity = identity
        #: method -> (the servicer's handler, its wrapped handler): wrapped once, not per call
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith("/exchange.v1.Hub/"):
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        name = method.rsplit("/", maxsplit=1)[-1]
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await self._enter(name, context)
                try:
                    return await inner(request, context)
                except ExchangeError as error:
                    await self._abort(context, error)
                except Exception:
                    log.exception("unexpected failure", method=method)
                    raise
                finally:
                    structlog.contextvars.clear_contextvars()

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Server streams (Subscribe) and request streams (SubmitStream, AcknowledgeStream)
        # alike: authenticated once, when the stream opens; a request stream answers each
        # request's failure on the stream itself (see exchange.hub.streams).
        inner_stream = handler.unary_stream or handler.stream_stream
        if inner_stream is not None:
            make_handler = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream is not None
                else grpc.stream_stream_rpc_method_handler
            )

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                await self._enter(name, context)
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except ExchangeError as error:
                    await self._abort(context, error)
                finally:
                    structlog.contextvars.clear_contextvars()

            return make_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _enter(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # a correlation id for the log lines of this call (not a secret: no need for urandom)
        request_id = f"{random.getrandbits(64):016x}"
        try:
            caller = self.identity.unit(context)
        except ExchangeError as error:
            structlog.contextvars.bind_contextvars(request_id=request_id, method=name)
            await self._abort(context, error)
        CALLER.set(caller)
        structlog.contextvars.bind_contextvars(request_id=request_id, method=name, caller=caller)

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ExchangeError) -> None:
        status = status_for(error)
        log.info("call refused", code=error.code, status=status.name, reason=error.message)
        context.set_trailing_metadata(((ERROR_CODE_KEY, error.code),))
        await context.abort(status, f"[{error.code}] {error.message}")


def _submit_requests(batch: pb.SubmitRequests) -> Any:
    return batch.requests


def _submit_responses(answers: list[pb.SubmitResponse]) -> pb.SubmitResponses:
    return pb.SubmitResponses(responses=answers)


def _acknowledge_requests(batch: pb.AcknowledgeRequests) -> Any:
    return batch.requests


def _acknowledge_responses(answers: list[pb.AcknowledgeResponse]) -> pb.AcknowledgeResponses:
    return pb.AcknowledgeResponses(responses=answers)


class HubServicer(pb_grpc.HubServicer):
    """Protobuf in, protobuf out; everything else is HubService."""

    def __init__(
        self,
        service: HubService,
        directory_message: pb.SignedDirectory,
        stopping: asyncio.Event,
        streams: RequestStreams | None = None,
        *,
        send_limit: int = 64 * 1024 * 1024,
    ) -> None:
        self.service = service
        self.directory_message = directory_message
        self.stopping = stopping
        self.streams = streams or RequestStreams()
        #: a stream idle this long reads the store anyway (a safety net: deliveries
        #: reach open streams from the writer, see HubService)
        self.poll_seconds = 30.0
        #: deliveries read from the store at a time
        self.page = 256
        #: bytes of deliveries in one stream message at most (a larger one goes alone),
        #: well under what the server may send in one message
        self.batch_bytes = min(1024 * 1024, send_limit - 64 * 1024)

    async def Submit(
        self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitResponse:
        evidence = await self.service.submit(CALLER.get(), request.envelope)
        return pb.SubmitResponse(evidence=evidence)

    async def SubmitStream(
        self,
        requests: AsyncIterator[pb.SubmitRequests],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.SubmitResponses]:
        caller = CALLER.get()
        submit = self.service.submit

        async def one(request: pb.SubmitRequest) -> pb.SubmitResponse:
            try:
                evidence = await submit(caller, request.envelope)
            except ExchangeError as error:
                return pb.SubmitResponse(tag=request.tag, failure=failure_for(error))
            except Exception:  # a bug: this request fails, the stream and the others go on
                log.exception("unexpected failure", method="SubmitStream")
                return pb.SubmitResponse(tag=request.tag, failure=UNEXPECTED)
            return pb.SubmitResponse(tag=request.tag, evidence=evidence)

        async for answers in self.streams.answer(
            requests, _submit_requests, one, _submit_responses
        ):
            yield answers

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Deliveries]:
        caller = CALLER.get()
        cursor = request.cursor
        subscription = self.service.subscribe(caller)
        log.info("subscribed", cursor=cursor)
        # Tell the node at once that the stream is open (gRPC would otherwise hold the
        # headers back until the first delivery, and an idle node could not tell).
        await context.send_initial_metadata(())
        try:
            while not self.stopping.is_set():
                subscription.event.clear()
                if subscription.reread_all:
                    # notices from other replicas may have been missed: from the start
                    subscription.reread_all, subscription.reread = False, True
                    cursor = request.cursor
                # What other replicas stored, by number: it may lie below the cursor, and
                # it does not move the cursor (what this replica committed before it may
                # still be on its way here, or on the next page of the store).
                announced = await self._announced(caller, subscription)
                if subscription.reread:
                    # the store: at first, after falling behind, and now and then
                    subscription.reread = False
                    ordered = await self.service.pending(caller, cursor, self.page)
                    if len(ordered) == self.page:
                        subscription.reread = True  # more after this page
                else:
                    ordered = subscription.take()
                ordered = [item for item in ordered if item.sequence > cursor]
                if ordered:
                    cursor = ordered[-1].sequence  # the store and the mailbox come in order
                # once each, in sequence order
                items = sorted(
                    {item.sequence: item for item in (*announced, *ordered)}.values(),
                    key=lambda item: item.sequence,
                )
                sent = False
                for deliveries in self._messages(items, caller):
                    yield deliveries
                    sent = True
                if sent or subscription.reread or subscription.items or subscription.announced:
                    continue
                try:
                    async with asyncio.timeout(self.poll_seconds):
                        await subscription.event.wait()
                except TimeoutError:
                    subscription.reread = True
        finally:
            self.service.unsubscribe(subscription)

    async def _announced(self, caller: str, subscription: Subscription) -> list[PendingDelivery]:
        if not subscription.announced:
            return []
        sequences = sorted(subscription.announced)[: self.page]  # a page at a time
        subscription.announced.difference_update(sequences)
        return await self.service.pending_sequences(caller, sequences)

    def _messages(self, items: list[PendingDelivery], caller: str) -> Iterator[pb.Deliveries]:
        """The deliveries as stream messages of at most ``batch_bytes`` (or one delivery)."""
        batch: list[pb.Delivery] = []
        size = 0
        for item in items:
            delivery = pb.Delivery(
                sequence=item.sequence,
                message_id=item.message_id,
                envelope=item.envelope,
                accepted=item.accepted,
                on_behalf_of=item.addressee if item.addressee != caller else "",
            )
            length = delivery.ByteSize() + 8  # and its field tag and length in the list
            if batch and size + length > self.batch_bytes:
                yield pb.Deliveries(deliveries=batch)
                batch, size = [], 0
            batch.append(delivery)
            size += length
        if batch:
            yield pb.Deliveries(deliveries=batch)

    async def Acknowledge(
        self, request: pb.AcknowledgeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AcknowledgeResponse:
        evidence = await self.service.acknowledge(
            CALLER.get(),
            message_id=request.message_id,
            sequence=request.sequence,
            read=request.read,
            on_behalf_of=request.on_behalf_of,
        )
        return pb.AcknowledgeResponse(evidence=evidence)

    async def AcknowledgeStream(
        self,
        requests: AsyncIterator[pb.AcknowledgeRequests],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.AcknowledgeResponses]:
        caller = CALLER.get()
        acknowledge = self.service.acknowledge

        async def one(request: pb.AcknowledgeRequest) -> pb.AcknowledgeResponse:
            try:
                evidence = await acknowledge(
                    caller,
                    message_id=request.message_id,
                    sequence=request.sequence,
                    read=request.read,
                    on_behalf_of=request.on_behalf_of,
                )
            except ExchangeError as error:
                return pb.AcknowledgeResponse(tag=request.tag, failure=failure_for(error))
            except Exception:
                log.exception("unexpected failure", method="AcknowledgeStream")
                return pb.AcknowledgeResponse(tag=request.tag, failure=UNEXPECTED)
            return pb.AcknowledgeResponse(tag=request.tag, evidence=evidence)

        async for answers in self.streams.answer(
            requests, _acknowledge_requests, one, _acknowledge_responses
        ):
            yield answers

    async def Forward(
        self, request: pb.ForwardRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ForwardResponse:
        evidence = await self.service.forward(CALLER.get(), request.envelope)
        return pb.ForwardResponse(evidence=evidence)

    async def GetEvidences(
        self, request: pb.GetEvidencesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetEvidencesResponse:
        stored = await self.service.evidences(CALLER.get(), request.message_id)
        return pb.GetEvidencesResponse(evidences=[pb.Evidence.FromString(e) for e in stored])

    async def GetDirectory(
        self, request: pb.GetDirectoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SignedDirectory:
        return self.directory_message

    # Parts of the wire contract that later versions serve; until then the caller is
    # told so plainly (UNIMPLEMENTED), never given an empty answer.

    async def RequestPermission(
        self, request: pb.PermissionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PermissionRequestResponse:
        evidence = await self.service.ask_permission(
            CALLER.get(),
            message_id=request.message_id,
            recipients=list(request.recipients),
            purpose=request.purpose,
            reason=request.reason,
        )
        return pb.PermissionRequestResponse(evidence=evidence)

    async def GrantPermission(
        self, request: pb.GrantPermissionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GrantPermissionResponse:
        evidence = await self.service.answer_permission(CALLER.get(), request)
        return pb.GrantPermissionResponse(evidence=evidence)

    async def Erase(
        self, request: pb.EraseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EraseResponse:
        evidence = await self.service.erase(
            CALLER.get(), message_id=request.message_id, reason=request.reason
        )
        return pb.EraseResponse(evidence=evidence)

    async def GetStatistics(self, request: Any, context: Any) -> Any:
        raise NotAvailable("statistics are not served by this hub yet")

    async def GetTreeHead(
        self, request: pb.GetTreeHeadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SignedTreeHead:
        return await self.service.tree_head()

    async def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InclusionProof:
        hashes = await self.service.inclusion_proof(request.index, request.tree_size)
        return pb.InclusionProof(index=request.index, tree_size=request.tree_size, hashes=hashes)

    async def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ConsistencyProof:
        hashes = await self.service.consistency_proof(request.old_size, request.new_size)
        return pb.ConsistencyProof(
            old_size=request.old_size, new_size=request.new_size, hashes=hashes
        )


def directory_message(
    policy: Policy, directory: Directory, certs: Path, signer: EvidenceSigner, clock: Clock
) -> pb.SignedDirectory:
    """The hub-signed directory: units, status, channels, clearance, suites, certificates."""
    der_by_key_id: dict[str, bytes] = {}
    layout = PkiLayout(certs)
    for path in sorted(layout.root.rglob("*.crt")):
        try:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
            der_by_key_id[key_id(certificate.public_key())] = certificate.public_bytes(  # type: ignore[arg-type]
                serialization.Encoding.DER
            )
        except (ValueError, TypeError, AttributeError):
            continue  # TLS and CA certificates (ECDSA) carry no unit key: skip them
    now = clock.now()
    units = []
    for unit in policy.registry:
        units.append(
            pb.DirectoryUnit(
                id=unit.id,
                name=unit.name,
                status=pb.PartnerStatus.Value(f"PARTNER_STATUS_{unit.status.name}"),
                channels=[pb.Channel.Value(f"CHANNEL_{c.name}") for c in sorted(unit.channels)],
                clearance=pb.Classification.Value(f"CLASSIFICATION_{unit.clearance.name}"),
                relay=unit.relay or "",
                suites=[s.id for s in suites_supported(directory, unit.id, now)],
                keys=[
                    pb.CertifiedKey(
                        algorithm=k.algorithm.value,
                        key_id=k.key_id,
                        certificate_der=der_by_key_id.get(k.key_id, b""),
                    )
                    for k in directory.keys.get(unit.id, ())
                ],
            )
        )
    crl = layout.crl.read_bytes() if layout.crl.exists() else b""
    body = pb.Directory(
        units=units,
        crl_der=x509.load_pem_x509_crl(crl).public_bytes(serialization.Encoding.DER)
        if crl
        else b"",
        ca_certificate_der=x509.load_pem_x509_certificate(layout.ca_cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        ),
        issued_at_us=int(now.timestamp() * 1_000_000),
    ).SerializeToString(deterministic=True)
    evidence = signer.sign(body, now, prefix=DIRECTORY_PREFIX)
    return pb.SignedDirectory(directory=body, signatures=list(evidence.signatures))


@dataclass
class HubConfig:
    """What `exchange hub serve` needs."""

    listen: str
    certs: Path
    db_url: str
    policies: Path
    clock: Clock
    grace_seconds: float = 10.0


@dataclass
class RunningHub:
    """A started hub: its server, service and the port it listens on."""

    server: grpc.aio.Server
    service: HubService
    port: int
    stopping: asyncio.Event
    streams: RequestStreams

    async def stop(self, grace: float = 10.0) -> None:
        """Drain: refuse new calls, end streams, finish in-flight submits, stop the writer."""
        self.stopping.set()
        self.service.wake_subscribers()
        self.streams.stop_reading()
        await self.server.stop(grace)
        await asyncio.to_thread(self.service.stop)


async def start_hub(config: HubConfig) -> RunningHub:
    """Build everything from files and start serving (returns once the port is bound)."""
    policy = load_policy(config.policies)
    directory = load_directory(config.certs)
    keyring = load_hub_keyring(config.certs)
    signer = EvidenceSigner(keyring=keyring, directory=directory)
    engine = make_engine(config.db_url)
    await asyncio.to_thread(upgrade, engine)
    service = HubService(
        engine=engine, policy=policy, directory=directory, signer=signer, clock=config.clock
    )
    layout = PkiLayout(config.certs)
    verifier = PeerVerifier(
        x509.load_pem_x509_certificate(layout.ca_cert.read_bytes()),
        x509.load_pem_x509_crl(layout.crl.read_bytes()),
    )
    tls = load_tls_material(config.certs, HUB_UNIT)
    limit = policy.max_envelope_bytes + 1024 * 1024
    server = grpc.aio.server(
        interceptors=[ExchangeInterceptor(CallerIdentity(verifier, config.clock, policy.registry))],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_concurrent_streams", 4096),
        ],
    )
    stopping = asyncio.Event()
    streams = RequestStreams()
    pb_grpc.add_HubServicer_to_server(
        HubServicer(
            service,
            directory_message(policy, directory, config.certs, signer, config.clock),
            stopping,
            streams,
            send_limit=limit,
        ),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("exchange.v1.Hub", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            pb.DESCRIPTOR.services_by_name["Hub"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    credentials = grpc.ssl_server_credentials(
        [(tls.private_key_pem, tls.certificate_chain_pem)],
        root_certificates=tls.root_ca_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port(config.listen, credentials)
    if port == 0:
        raise InputError(f"cannot listen on {config.listen}")
    service.start()
    await service.record_policy()
    await server.start()
    log.info("hub serving", listen=config.listen, port=port, policy_hash=policy.hash[:16])
    return RunningHub(server=server, service=service, port=port, stopping=stopping, streams=streams)


def raise_open_files_limit() -> None:
    """One connection per node: let the process open files up to its hard limit."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def settle_garbage_collector() -> None:
    """Once started: what the hub loaded stays, so the collector need not rescan it.

    A full collection walks every tracked object; with what start-up loaded (some
    100,000 objects) that stalled the process for 60-90 ms several times a minute
    under load, which is what the slowest submits waited for. Frozen, start-up
    objects are left out of collections (their cycles, if any, live as long as the hub).
    """
    gc.collect()
    gc.freeze()


async def serve(config: HubConfig, *, ready: Callable[[int], None] | None = None) -> None:
    """Run the hub until SIGTERM or SIGINT, then drain and return (exit 0)."""
    raise_open_files_limit()
    hub = await start_hub(config)
    settle_garbage_collector()
    if ready is not None:
        ready(hub.port)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, done.set)
    await done.wait()
    log.info("hub draining", grace_seconds=config.grace_seconds)
    await hub.stop(config.grace_seconds)
    log.info("hub stopped")
