"""Refusals of a change to the running service, by what the caller can do about them. The API
maps each to one status code; the message says why and what the line keeps doing."""

from __future__ import annotations


class RefusedError(ValueError):
    """The change cannot be made as asked (a file that does not load, another task): nothing
    changed (HTTP 422)."""


class ConflictError(RuntimeError):
    """The change does not apply to the current state (no candidate to promote, no earlier model
    to roll back to): nothing changed (HTTP 409)."""


class NotFoundError(LookupError):
    """There is nothing of that kind to show or remove (HTTP 404)."""
