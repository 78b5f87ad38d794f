"""Exceptions of the RMI layer."""

from __future__ import annotations

from ..errors import BndlLikeError


class NotConnected(BndlLikeError, ConnectionError):
    """The peer is not (or no longer) connected; a call could not complete."""


class ProtocolError(BndlLikeError):
    """A peer sent bytes that break the wire protocol; its connection is closed."""


class HandshakeError(BndlLikeError, ConnectionError):
    """The handshake with a peer failed (secret, protocol version, cluster name)."""

    def __init__(self, reason: str, reject=None):
        super().__init__(reason)
        self.reason = reason
        self.reject = reject  # frame chunks to send the peer before closing, if any


class MessageTooLarge(BndlLikeError, ValueError):
    """A message exceeds the configured maximum message size."""


class SerializationError(BndlLikeError, TypeError):
    """An object could not be pickled or unpickled for a remote call."""


class RemoteError(BndlLikeError):
    """An exception raised on a remote node.

    ``__cause__`` is the original exception (with the remote frames attached as
    its traceback) when it could be unpickled; ``remote_traceback`` is the
    remote traceback as text, ``exc_type`` the name of the remote type.
    """

    def __init__(self, message: str, exc_type: str = "", remote_traceback: str = "",
                 peer: str = ""):
        super().__init__(message)
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback
        self.peer = peer

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback (on %s):\n%s" % (self.peer or "peer",
                                                        self.remote_traceback.rstrip())
        return text
