"""A real SMTP server in the test process (aiosmtpd) that records and misbehaves on request.

It can defer the first attempt (451), refuse a recipient (550), drop the connection, or
answer slower than the client's timeout. Used by the backend, outbox and fault tests.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

# -- a real SMTP server ---------------------------------------------------------------------


@dataclass
class Delivery:
    peer: tuple[str, int]
    mail_from: str
    rcpt_tos: list[str]
    message_id: str
    content: bytes
    tls: bool
    authenticated: bool


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that records deliveries and misbehaves on request."""

    defer_first_attempt: bool = False
    defer_always: bool = False
    reject_recipients: set[str] = field(default_factory=set)
    reject_sender: bool = False
    # Refuse every message for good at its end of data (554), as a mail server that will
    # not take this sender's mail does (a policy block); False again: it takes them.
    refuse_every_message: bool = False
    drop_at_mail_number: int | None = None
    drop_after_data_number: int | None = None
    slow_rcpt_seconds: float = 0.0
    slow_data_seconds: float = 0.0
    # Offer PIPELINING (RFC 2920), as most mail servers do; False: a server that does not.
    pipelining: bool = True
    # While set and not yet opened, every DATA waits for it (a test holds senders back).
    gate: threading.Event | None = None
    delivered: list[Delivery] = field(default_factory=list)
    data_attempts: Counter[str] = field(default_factory=Counter)
    rcpt_attempts: Counter[str] = field(default_factory=Counter)
    ehlo_count: int = 0
    mail_count: int = 0
    transports: list[Any] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlo_count += 1
        session.host_name = hostname
        self.transports.append(server.transport)
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.mail_count += 1
        if self.mail_count == self.drop_at_mail_number:
            server.transport.abort()
            return "421 4.4.2 gone"  # never reaches the client: the transport is gone
        if self.reject_sender:
            return "550 5.7.1 sender not allowed"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.rcpt_attempts[address] += 1
        if self.slow_rcpt_seconds:
            await asyncio.sleep(self.slow_rcpt_seconds)
        if address in self.reject_recipients:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        message_id = str(parsed["Message-ID"])
        self.data_attempts[message_id] += 1
        while self.gate is not None and not self.gate.is_set():
            await asyncio.sleep(0.05)
        if self.slow_data_seconds:
            await asyncio.sleep(self.slow_data_seconds)
        if self.refuse_every_message:
            return "554 5.7.1 message refused by policy"
        first = self.data_attempts[message_id] == 1
        if self.defer_always or (self.defer_first_attempt and first):
            return "451 4.3.0 try later"
        self.delivered.append(
            Delivery(
                peer=session.peer,
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message_id=message_id,
                content=envelope.original_content,
                tls=server.transport.get_extra_info("ssl_object") is not None,
                authenticated=bool(session.authenticated),
            )
        )
        if len(self.delivered) == self.drop_after_data_number:
            # Accepted and stored, but the client never hears so.
            server.transport.abort()
        return "250 OK"

    @property
    def delivered_ids(self) -> Counter[str]:
        return Counter(delivery.message_id for delivery in self.delivered)

    @property
    def connections_used(self) -> int:
        return len({delivery.peer for delivery in self.delivered})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SmtpServer:
    handler: RecordingHandler
    controller: Controller
    port: int

    def abort_connections(self) -> None:
        """Close every client connection from the server side, as an idle timeout would."""
        done = threading.Event()

        def abort_all() -> None:
            for transport in self.handler.transports:
                transport.abort()
            done.set()

        self.controller.loop.call_soon_threadsafe(abort_all)
        assert done.wait(5)


ServerFactory = Callable[..., SmtpServer]


@pytest.fixture
def smtp_server() -> Iterator[ServerFactory]:
    """Start aiosmtpd servers on free local ports; all are stopped after the test."""
    started: list[Controller] = []

    def start(handler: RecordingHandler | None = None, **controller_kwargs: Any) -> SmtpServer:
        handler = handler or RecordingHandler()
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **controller_kwargs)
        controller.start()
        started.append(controller)
        return SmtpServer(handler, controller, port)

    yield start
    for controller in started:
        controller.stop()
