"""The local installer page (issue #19): cameras, zones drawn on the picture, food references,
health and alerts, served by the agent itself on the kitchen's LAN.

``backend`` (the :class:`~agent.web.backend.WebBackend` Protocol the service implements) and
``auth`` (password hash, sessions, login limit) use the standard library only; ``app``
(Starlette, Jinja2) and ``server`` (uvicorn) are imported only when ``web.enabled``, so the
command line and an agent without the page do not load the web stack. This package imports
no service module; only :mod:`agent.service` and :mod:`agent.cli` import it.
"""
