"""Why a model cannot be served (shared by the resolver and the model families)."""

from __future__ import annotations


class ModelError(ValueError):
    """This model cannot be served; the message says exactly why."""
