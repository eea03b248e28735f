"""Deployments: retained messages on ``<prefix>/deploy/<app>`` drive ``docker compose``."""

__all__: list[str] = []
