"""Serving the installer page: uvicorn on its own daemon thread, named ``web``.

The agent starts it (:meth:`WebServer.start`) after its other threads and stops it first at
shutdown (:meth:`WebServer.stop`, within 2 s), so no change arrives while the store closes.
The socket is bound here, on the caller's thread, before the server thread starts: a port in
use or an address that is not this box's is a :class:`~agent.errors.WebError` naming the
address, not an exit from inside uvicorn. uvicorn runs with our logging (it configures
none), no signal handlers (it installs them only on the main thread), no proxy headers (the
login limit keys on the real peer address), no lifespan and no websockets.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time

import uvicorn
from starlette.types import ASGIApp

from agent.config import WebConfig
from agent.errors import WebError

logger = logging.getLogger(__name__)

THREAD_NAME = "web"
STOP_TIMEOUT = 2.0  # the agent's shutdown waits this long for the page at most
START_TIMEOUT = 5.0
#: Connections served at once: an installer's browser opens a handful.
MAX_CONNECTIONS = 32
_BIND_HINTS = {
    errno.EADDRINUSE: "another program listens there",
    errno.EADDRNOTAVAIL: "not an address of this box",
    errno.EACCES: "ports below 1024 need a privilege the service does not have: use 8080 or 8443",
}


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host``:``port`` (port 0: any free port).

    Raises:
        WebError: the address cannot be resolved or bound; the message names it and why.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise WebError(f"web.listen {where}: cannot resolve the address: {exc}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        hint = _BIND_HINTS.get(exc.errno or 0)
        reason = exc.strerror or str(exc)
        raise WebError(
            f"web.listen {where}: cannot listen: {reason}{f' ({hint})' if hint else ''}"
        ) from None
    return sock


class WebServer:
    """uvicorn serving ``app`` on ``config.listen``, on the ``web`` thread."""

    def __init__(self, app: ASGIApp, config: WebConfig) -> None:
        """Nothing is bound or started until :meth:`start`."""
        self.app = app
        self.config = config
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the port the system chose when ``listen`` asked for 0)."""
        if self._socket is None:
            return self.config.host, self.config.port
        name = self._socket.getsockname()
        return str(name[0]), int(name[1])

    @property
    def url(self) -> str:
        """The page's address as a browser writes it."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.config.use_tls else 'http'}://{shown}:{port}/"

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, sock: socket.socket | None = None) -> None:
        """Bind (unless ``sock`` is given), load TLS, and serve on the ``web`` thread.

        Raises:
            WebError: the address cannot be bound, the TLS files cannot be used, or the
                server did not come up within 5 s.
        """
        if self._thread is not None:
            raise WebError("the installer page is already started")
        if not self.config.use_tls:
            logger.warning(
                "installer page: web.tls is off: its session cookie cannot be Secure and the "
                "password crosses the LAN in clear; set web.tls to a certificate on a shared LAN"
            )
        tls = self.config.tls
        uv_config = uvicorn.Config(
            self.app,
            host=self.config.host,
            port=self.config.port,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,  # the agent's logging stays as it is
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=1,
            ssl_certfile=None if tls is None else str(tls.cert_file),
            ssl_keyfile=None if tls is None else str(tls.key_file),
        )
        try:
            uv_config.load()
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            files = "" if tls is None else f" ({tls.cert_file}, {tls.key_file})"
            raise WebError(
                f"web.tls: cannot use the certificate and key{files}: {reason}"
            ) from None
        self._socket = sock if sock is not None else bind(self.config.host, self.config.port)
        server = uvicorn.Server(uv_config)
        self._server = server
        self._thread = threading.Thread(
            target=self._serve, args=(server, self._socket), name=THREAD_NAME, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise WebError(f"the installer page did not start on {self.config.listen}")
            time.sleep(0.01)
        logger.info("installer page at %s", self.url)

    @staticmethod
    def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException:  # the web thread's top: a crash ends the page, not the agent
            logger.exception("installer page: the web server stopped")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Close the page: no new connection, open ones ended, the thread joined (``timeout``)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(max(0.0, timeout - 0.5))
        if thread.is_alive():
            server.force_exit = True
            thread.join(0.5)
        if thread.is_alive():
            logger.warning("installer page: the web thread did not end within %.1f s", timeout)
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._server = None
        logger.info("installer page stopped")
