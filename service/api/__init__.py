"""HTTP API: `create_app` builds the FastAPI application around a started `LineInspect`."""

from service.api.server import create_app

__all__ = ["create_app"]
