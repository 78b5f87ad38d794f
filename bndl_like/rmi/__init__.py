"""Transport, remote method invocation and discovery. Knows nothing of jobs."""

from .addresses import Address, parse_address
from .connection import takes_peer
from .errors import (
                     HandshakeError,
                     MessageTooLarge,
                     NotConnected,
                     ProtocolError,
                     RemoteError,
                     SerializationError,
)
from .node import Node, Peer
from .pickle_check import UnpicklableError

__all__ = ["Address", "parse_address", "takes_peer", "HandshakeError", "MessageTooLarge",
           "NotConnected", "ProtocolError", "RemoteError", "SerializationError", "UnpicklableError",
           "Node", "Peer"]
