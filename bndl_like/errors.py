"""The root of the package's own exceptions.

Every error bndl_like raises on purpose derives from :class:`BndlLikeError` and keeps the
standard base it had (``TaskTimeout`` is a ``TimeoutError``, ``NotConnected`` a
``ConnectionError``, ``SerializationError`` a ``TypeError``...), so ``except BndlLikeError``
catches them all and every ``except TimeoutError`` written before still works.

``TaskCancelled`` is the exception: it is a ``BaseException`` raised inside a cancelled task's
thread so that the task's ``except Exception`` does not swallow it, and so not an error.

This module imports nothing of bndl_like: every layer (``rmi`` too) may import it.
"""

from __future__ import annotations


class BndlLikeError(Exception):
    """The base of every error bndl_like raises on purpose (``except BndlLikeError``)."""


__all__ = ["BndlLikeError"]
