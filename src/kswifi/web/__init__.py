"""The KSWiFi Connect web app and operator console (server-rendered pages)."""

from __future__ import annotations

from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    """Attach the web pages and static files to the app."""
    return None
