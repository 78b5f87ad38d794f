"""A blocking client that speaks the wire protocol by hand, to misbehave on purpose."""

from __future__ import annotations

import json
import socket

from bndl_like.rmi import protocol
from bndl_like.rmi.errors import HandshakeError
from bndl_like.rmi.protocol import FrameDecoder, Handshake

UPGRADE_REQUEST = (f"GET /rmi HTTP/1.1\r\nHost: x\r\nUpgrade: {protocol.UPGRADE_TOKEN}\r\n"
                   "Connection: Upgrade\r\n\r\n").encode()


class RawClient:
    def __init__(self, address: str, timeout: float = 5.0):
        host, port = address[len("tcp://"):].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.decoder = FrameDecoder(1 << 30)
        self.sealer = None

    def close(self) -> None:
        self.sock.close()

    def upgrade(self) -> None:
        self.sock.sendall(UPGRADE_REQUEST)
        self.read_upgrade()

    def read_upgrade(self) -> None:
        """Read the answer to the upgrade request; frames that came with it are kept for ``recv_frame``."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during upgrade"
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.pending = self.decoder.feed(rest) if rest else []

    def send(self, chunks) -> None:
        for chunk in chunks:
            self.sock.sendall(chunk)

    def recv_frame(self):
        while not self.pending:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.pending.extend(self.decoder.feed(chunk))
        return self.pending.pop(0)

    def handshake(self, secret, cluster="default", version=protocol.PROTOCOL_VERSION,
                  name="raw-client"):
        """Run the client side; return None on success or the HandshakeError.

        On success the stream is sealed: ``send_sealed`` frames pass, and frames from
        the node are checked as the node's own decoder would."""
        hs = Handshake("client", secret, cluster, {"name": name, "node_type": "driver",
                                                   "addresses": []}, version=version)
        self.send(hs.start())
        while not hs.done:
            frame = self.recv_frame()
            if frame is None:
                return HandshakeError("connection closed during the handshake")
            try:
                self.send(hs.receive(frame))
            except HandshakeError as exc:
                if exc.reject:
                    self.send(exc.reject)
                return exc
            if hs.opener is not None and self.decoder.opener is None:
                self.decoder.seal(hs.opener)
        self.sealer = hs.sealer
        return None

    def send_sealed(self, kind, main=b"", parts=()) -> None:
        self.send(self.sealer.seal(kind, main, parts))

    def is_closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Read until the peer closes; True if it did within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                frame = self.recv_frame()
                if frame is None:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    @staticmethod
    def reason(frame) -> str:
        return json.loads(bytes(frame.main))["reason"]
