"""Screening in the browser: a static site that runs the ONNX graph with ONNX Runtime Web, so
images never leave the user's machine (`pneumoscan export --web DIR`)."""

from .build import build_site

__all__ = ["build_site"]
