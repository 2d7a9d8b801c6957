"""The HTTP API: orchestrator-core's REST paths on Starlette, live updates from PostgreSQL LISTEN/NOTIFY.

The engine does not import this package; it only calls the Python API (`orchestrator.services`).
"""

from orchestrator.http.app import create_app

__all__ = ["create_app"]
