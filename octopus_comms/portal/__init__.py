"""The web portal at `https://+:PORT/app/`: machines and their live connections, tasks, scripts.

Server-rendered HTML behind the same front door as the comms endpoint and the REST API; see
app.py for how sessions, CSRF and the session API key fit together.
"""

from .app import Portal, portal_route_prefix

__all__ = ["Portal", "portal_route_prefix"]
