"""The raw baseline of ``exchange bench exchange``: a unary echo over the same mutual TLS.

Run as ``python -m exchange.bench.echo --certs DIR --port-file FILE``: a grpc.aio
server with the hub's TLS certificate, requiring client certificates from the same CA,
answering every call with the request's bytes. Nothing else: what a hub cannot beat.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc

from exchange.files import write_atomic
from exchange.pki import load_tls_material

ECHO_METHOD = "/exchange.bench.Echo/Echo"
LIMIT = 64 * 1024 * 1024


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve(certs: Path, port_file: Path) -> None:
    tls = load_tls_material(certs, "HUB")
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", LIMIT),
            ("grpc.max_send_message_length", LIMIT),
            ("grpc.max_concurrent_streams", 4096),
        ]
    )
    handler = grpc.method_handlers_generic_handler(
        "exchange.bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _echo, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(tls.private_key_pem, tls.certificate_chain_pem)],
        root_certificates=tls.root_ca_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    write_atomic(port_file, f"{port}\n".encode())
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    await done.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.certs, args.port_file))


if __name__ == "__main__":
    main()
