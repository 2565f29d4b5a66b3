"""The web service: a FastAPI app factory, its upload checks and a static page."""

from .app import Settings, create_app

__all__ = ["Settings", "create_app"]
