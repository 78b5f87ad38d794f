"""bndl_like: run DAG jobs of interdependent tasks on a cluster of worker processes."""

from .rmi.errors import NotConnected, RemoteError

__version__ = "0.1.0"

__all__ = ["NotConnected", "RemoteError", "__version__"]
