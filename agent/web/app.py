"""The installer page as an ASGI app (Starlette): routes, login, CSRF, security headers.

Routes (the frontend's contract; JSON in and out under ``/api``):

=======================================================  =========================================
``GET /login``, ``POST /login``, ``POST /logout``        the password form (double-submit CSRF
                                                         cookie ``mclz_login_csrf``); 303 to ``/``,
                                                         401 wrong password, 429 locked out
``GET /``, ``/cameras/{id}``, ``/health``, ``/alerts``   server-rendered pages
``GET /cameras/{id}/snapshot.jpg?detections=1``          newest analysed frame, boxes drawn;
                                                         cached 0.25 s (at most ~4 per second)
``GET /api/cameras``                                     state, fps, quality, last outage, size
``GET|PUT /api/cameras/{id}/zones``                      zones and the rules' zones; PUT saves
                                                         through ``config check``'s validation
                                                         and reloads the agent
``POST /api/cameras/{id}/food/{zone}/record|test``       ``food calibrate`` / ``food test``
``GET /api/health``, ``GET /api/alerts?limit=N``         checks, heartbeat, alarm; alerts
``GET /alerts/{id}/evidence.jpg``                        an alert's stored evidence image
``POST /api/alarm/mute``, ``POST /api/alarm/unmute``     the platform's mute
``GET /healthz``, ``GET /static/*``                      no login needed
=======================================================  =========================================

Every other route needs a session (pages redirect to ``/login``, ``/api`` answers 401), and
every POST, PUT and DELETE needs the session's CSRF token in ``X-CSRF-Token`` (or a form
field ``csrf``), else 403. Every response carries a strict Content-Security-Policy (scripts
and styles from the page itself only), ``nosniff``, ``no-referrer``, and ``no-store`` unless
it is a static file.

Handlers are ``async`` and call the backend directly: the page serves an installer or two,
the backend's calls take milliseconds, and so all of it runs on the one ``web`` thread
(:mod:`agent.web.server`) instead of a thread pool. Only static and evidence files are read
through anyio's worker threads (Starlette's ``FileResponse``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.config import WebConfig
from agent.errors import (
    AgentError,
    ConfigError,
    PasswordHashError,
    SecretError,
    StoreError,
)
from agent.web.auth import LoginLimiter, Session, Sessions, new_token, same_token, verify_password
from agent.web.backend import InvalidRequestError, NoFrameError, NotFoundError, WebBackend

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

SESSION_COOKIE = "mclz_session"
LOGIN_CSRF_COOKIE = "mclz_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # for browsers older than frame-ancestors
}
PUBLIC_PATHS = frozenset({"/login", "/healthz"})
STATIC_PREFIX = "/static/"
UNSAFE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
#: Largest request body: a camera's zones are a few kB; a form, less.
MAX_BODY_BYTES = 1024 * 1024
#: A snapshot younger than this is served again, not re-encoded: ~4 per second per camera
#: at most, whatever the number of open tabs (encoding a 720p JPEG takes ~10 ms of a core).
SNAPSHOT_TTL = 0.25
DEFAULT_ALERTS = 50
MAX_ALERTS = 500
WRONG_PASSWORD = "密码错误 (wrong password)"  # noqa: S105 - the message, not a password
CSRF_REFUSED = "missing or wrong CSRF token"
ZONE_KEYS = frozenset({"name", "polygon", "exclude", "food"})
ZONES_BODY_KEYS = frozenset({"camera", "width", "height", "zones", "rules"})


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def _error(status: int, message: str, **extra: Any) -> Response:
    return _json({"error": message, **extra}, status)


def client_address(scope: Scope) -> str:
    """The peer's address (never a forwarded header: the login limit keys on it)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def actor(request: Request) -> str:
    """Who made a change, as the commands table records it: ``web:<client address>``."""
    return f"web:{client_address(request.scope)}"


# --------------------------------------------------------------------------- middleware


class _SecurityHeaders:
    """Adds the security headers to every response, and ``no-store`` to all but static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope["path"]).startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BodyTooLargeError(Exception):
    """The request body grew past :data:`MAX_BODY_BYTES` while it was read."""


class _Guard:
    """Login and CSRF for every route but the public ones, and the request body's size cap.

    No session: pages (GET) redirect to ``/login``, anything else answers 401 JSON. A
    session: its CSRF token must come with every POST, PUT, DELETE and PATCH, in the
    ``X-CSRF-Token`` header or, for a urlencoded form, its ``csrf`` field; else 403. The
    session is handed on in ``scope["mclz.session"]``.
    """

    def __init__(self, app: ASGIApp, sessions: Sessions, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.sessions = sessions
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _error(413, f"the request body is over {self.max_body} bytes")(
                scope, receive, send
            )
            return
        receive = self._limited(receive)
        path = str(scope["path"])
        if path in PUBLIC_PATHS or path.startswith(STATIC_PREFIX):
            await self._call(scope, receive, send)
            return
        session = self.sessions.get(Request(scope).cookies.get(SESSION_COOKIE))
        method = str(scope["method"])
        if session is None:
            if method in {"GET", "HEAD"} and not path.startswith("/api/"):
                await RedirectResponse("/login", status_code=303)(scope, receive, send)
            else:
                await _error(401, "not logged in")(scope, receive, send)
            return
        if method in UNSAFE_METHODS:
            token = headers.get(CSRF_HEADER)
            content_type = headers.get("content-type", "")
            if token is None and content_type.startswith("application/x-www-form-urlencoded"):
                try:
                    body = await self._read(receive)
                except _BodyTooLargeError:
                    await _error(413, f"the request body is over {self.max_body} bytes")(
                        scope, receive, send
                    )
                    return
                token = parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD, [None])[0]
                receive = _replay(body)
            if not same_token(token, session.csrf):
                logger.warning(
                    "installer page: %s %s from %s refused: %s",
                    method,
                    path,
                    client_address(scope),
                    CSRF_REFUSED,
                )
                await _error(403, CSRF_REFUSED)(scope, receive, send)
                return
        scope["mclz.session"] = session
        await self._call(scope, receive, send)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except _BodyTooLargeError:
            if started:
                raise
            await _error(413, f"the request body is over {self.max_body} bytes")(
                scope, receive, send
            )

    def _limited(self, receive: Receive) -> Receive:
        total = 0

        async def limited() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body:
                    raise _BodyTooLargeError
            return message

        return limited

    @staticmethod
    async def _read(receive: Receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    """A ``receive`` that hands the already-read ``body`` to the app once more."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


# --------------------------------------------------------------------------- request bodies


def zones_body(
    data: object, camera_id: str
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]], list[str]]:
    """The zones and rules of a PUT body, and what is wrong with its shape.

    Only the shape is checked here (the right keys, lists, numbers, texts and booleans), so
    that anything the config file's own rules refuse (a 2-point or crossing polygon, a bad
    zone id, an unknown rule) is refused with the very message ``config check`` gives.
    """
    if not isinstance(data, dict):
        return {}, {}, ["the body must be a JSON object with zones and rules"]
    problems = [f"{key}: unknown key (zones, rules)" for key in sorted(set(data) - ZONES_BODY_KEYS)]
    if "camera" in data and data["camera"] != camera_id:
        problems.append(f"camera: {data['camera']!r} is not this camera ({camera_id})")
    zones: dict[str, dict[str, Any]] = {}
    raw_zones = data.get("zones")
    if isinstance(raw_zones, dict):
        for zone_id, zone in raw_zones.items():
            problems += _zone_shape(f"zones.{zone_id}", zone)
            if isinstance(zone, dict):
                name = zone.get("name")
                zones[str(zone_id)] = {
                    "name": name if isinstance(name, str) else "",
                    "polygon": zone.get("polygon"),
                    "exclude": zone.get("exclude", False),
                    "food": zone.get("food", False),
                }
    else:
        problems.append("zones: must be an object of zone id -> zone")
    rules: dict[str, list[str]] = {}
    raw_rules = data.get("rules", {})
    if isinstance(raw_rules, dict):
        for rule, used in raw_rules.items():
            if isinstance(used, list) and all(isinstance(z, str) for z in used):
                rules[str(rule)] = list(used)
            else:
                problems.append(f"rules.{rule}: must be a list of zone ids")
    else:
        problems.append("rules: must be an object of rule name -> list of zone ids")
    return zones, rules, problems


def _zone_shape(where: str, zone: object) -> list[str]:
    """What is wrong with the shape of one zone of a PUT body."""
    if not isinstance(zone, dict):
        return [f"{where}: must be an object (name, polygon, exclude, food)"]
    problems = [
        f"{where}.{key}: unknown key (name, polygon, exclude, food)"
        for key in sorted(set(zone) - ZONE_KEYS)
    ]
    name = zone.get("name")
    if name is not None and not isinstance(name, str):
        problems.append(f"{where}.name: must be text or null")
    polygon = zone.get("polygon")
    if not isinstance(polygon, list) or not all(
        isinstance(point, list) and all(_is_number(v) for v in point) for point in polygon
    ):
        problems.append(f"{where}.polygon: must be a list of [x, y] points (numbers 0..1)")
    for flag in ("exclude", "food"):
        if not isinstance(zone.get(flag, False), bool):
            problems.append(f"{where}.{flag}: must be true or false")
    return problems


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


async def _json_body(request: Request) -> object:
    """The request's JSON body (an empty body is ``{}``).

    Raises:
        InvalidRequestError: it is not JSON.
    """
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequestError(f"the body is not JSON: {exc}") from None


# --------------------------------------------------------------------------- the app


class _SnapshotCache:
    """The last JPEG per (camera, detections drawn), reused for :data:`SNAPSHOT_TTL`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, bool], tuple[float, bytes]] = {}

    def get(self, key: tuple[str, bool], make: Callable[[], bytes]) -> bytes:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now - entry[0] < SNAPSHOT_TTL:
                return entry[1]
        jpeg = make()
        with self._lock:
            self._entries[key] = (time.monotonic(), jpeg)
        return jpeg


class _Page:
    """The route handlers, sharing the backend, the sessions, the login limit and templates."""

    def __init__(self, backend: WebBackend, config: WebConfig, templates: Jinja2Templates) -> None:
        self.backend = backend
        self.config = config
        self.templates = templates
        self.sessions = Sessions(config.session_timeout)
        self.limiter = LoginLimiter(config.login_attempts)
        self.snapshots = _SnapshotCache()

    # ------------------------------------------------------------------ helpers

    def _render(
        self,
        request: Request,
        name: str,
        context: dict[str, Any] | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        session: Session | None = request.scope.get("mclz.session")
        full = {"csrf_token": session.csrf if session else "", "nav": name, **(context or {})}
        return self.templates.TemplateResponse(
            request, name, full, status_code=status, headers=headers
        )

    def _cookie(self, response: Response, key: str, value: str, path: str = "/") -> None:
        response.set_cookie(
            key,
            value,
            path=path,
            secure=self.config.use_tls,
            httponly=True,
            samesite="strict",
        )

    @staticmethod
    async def _api(call: Callable[[], Any]) -> Response:
        """``call``'s result as JSON; the agent's errors as their status and message."""
        try:
            return _json(call())
        except AgentError as exc:
            return _agent_error(exc)
        except Exception:  # the request's edge: a bug answers 500 and the page goes on
            logger.exception("installer page: request failed")
            return _error(500, "internal error (logged on the box)")

    # ------------------------------------------------------------------ login

    async def login_page(self, request: Request) -> Response:
        """The password form, with a fresh double-submit CSRF token."""
        if self.sessions.get(request.cookies.get(SESSION_COOKIE)) is not None:
            return RedirectResponse("/", status_code=303)
        return self._login_form(request, status=200)

    def _login_form(
        self,
        request: Request,
        *,
        status: int,
        error: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_token()
        response = self._render(
            request, "login.html", {"login_csrf": token, "error": error}, status, headers
        )
        self._cookie(response, LOGIN_CSRF_COOKIE, token, path="/login")
        return response

    async def login(self, request: Request) -> Response:
        """Check the password: 303 to / with a session cookie, 401, 403 (CSRF) or 429."""
        client = client_address(request.scope)
        wait = self.limiter.retry_after(client)
        if wait is not None:
            minutes = math.ceil(wait / 60)
            return self._login_form(
                request,
                status=429,
                error=f"尝试次数过多 (too many failed logins): try again in {minutes} min",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        form = await request.form()
        if not same_token(_text(form.get(CSRF_FIELD)), request.cookies.get(LOGIN_CSRF_COOKIE, "")):
            logger.warning("installer page: login from %s refused: %s", client, CSRF_REFUSED)
            return _error(403, CSRF_REFUSED)
        password = _text(form.get("password")) or ""
        try:
            ok = bool(password) and verify_password(self.backend.password_hash(), password)
        except (PasswordHashError, SecretError) as exc:
            logger.error("installer page: no usable password: %s", exc)
            return self._login_form(
                request,
                status=503,
                error="no usable password is set for this page: run mclz-agent web passwd "
                "on the box",
            )
        who = f"web:{client}"
        if not ok:
            self.limiter.failure(client)
            self._record(who, "login", {"ok": False}, ok=False)
            if self.limiter.retry_after(client) is not None:
                logger.warning(
                    "installer page: %s locked out after %d failed logins",
                    client,
                    self.config.login_attempts,
                )
            else:
                logger.warning("installer page: wrong password from %s", client)
            return self._login_form(request, status=401, error=WRONG_PASSWORD)
        self.limiter.success(client)
        self.sessions.end(request.cookies.get(SESSION_COOKIE))  # a fresh token at each login
        session = self.sessions.create(client)
        self._record(who, "login", {"ok": True}, ok=True)
        logger.info("installer page: %s logged in", client)
        response = RedirectResponse("/", status_code=303)
        self._cookie(response, SESSION_COOKIE, session.token)
        response.delete_cookie(
            LOGIN_CSRF_COOKIE,
            path="/login",
            secure=self.config.use_tls,
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        """End the session; 303 to the login page."""
        session: Session = request.scope["mclz.session"]
        self.sessions.end(session.token)
        self._record(actor(request), "logout", {}, ok=True)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(
            SESSION_COOKIE, path="/", secure=self.config.use_tls, httponly=True, samesite="strict"
        )
        return response

    def _record(self, who: str, what: str, details: Mapping[str, Any], *, ok: bool) -> None:
        try:
            self.backend.record(who, what, details, ok=ok)
        except StoreError as exc:
            logger.error("installer page: %s by %s not recorded: %s", what, who, exc)

    # ------------------------------------------------------------------ pages

    def _page(self, request: Request, name: str, context: Callable[[], dict[str, Any]]) -> Response:
        """The page ``name`` with ``context()``; the agent's errors as an error page."""
        try:
            values = context()
        except NotFoundError as exc:
            return self._render(request, "not_found.html", {"what": str(exc)}, status=404)
        except AgentError as exc:
            status = _agent_error(exc).status_code
            return self._render(request, "error.html", {"message": str(exc)}, status=status)
        except Exception:  # the request's edge: a bug answers 500 and the page goes on
            logger.exception("installer page: %s failed", request.url.path)
            message = "internal error (logged on the box)"
            return self._render(request, "error.html", {"message": message}, status=500)
        return self._render(request, name, values)

    async def cameras_page(self, request: Request) -> Response:
        """Every camera with its snapshot, state and figures."""
        return self._page(request, "cameras.html", lambda: {"cameras": self.backend.cameras()})

    async def camera_page(self, request: Request) -> Response:
        """One camera: the snapshot and the zone editor's canvas."""
        camera_id = request.path_params["camera_id"]

        def context() -> dict[str, Any]:
            camera = next((c for c in self.backend.cameras() if c["id"] == camera_id), None)
            if camera is None:
                raise NotFoundError(f"camera {camera_id}")
            return {"camera": camera, "zones": self.backend.zones(camera_id)}

        return self._page(request, "camera.html", context)

    async def health_page(self, request: Request) -> Response:
        """Check verdicts, heartbeat figures, the mute and the alarm's decisions."""
        return self._page(request, "health.html", lambda: {"health": self.backend.health()})

    async def alerts_page(self, request: Request) -> Response:
        """The last alerts with their evidence images."""
        return self._page(
            request, "alerts.html", lambda: {"alerts": self.backend.alerts(DEFAULT_ALERTS)}
        )

    # ------------------------------------------------------------------ images

    async def snapshot(self, request: Request) -> Response:
        """The camera's newest analysed frame as JPEG (boxes drawn with ``detections=1``)."""
        camera_id = request.path_params["camera_id"]
        draw = request.query_params.get("detections", "0").lower() in {"1", "true", "yes"}
        try:
            jpeg = self.snapshots.get(
                (camera_id, draw),
                lambda: self.backend.snapshot(camera_id, detections=draw),
            )
        except AgentError as exc:
            return _agent_error(exc)
        except Exception:  # the request's edge: a bug answers 500 and the page goes on
            logger.exception("installer page: snapshot of camera %s failed", camera_id)
            return _error(500, "internal error (logged on the box)")
        return Response(jpeg, media_type="image/jpeg")

    async def evidence(self, request: Request) -> Response:
        """An alert's evidence JPEG, only from the evidence directory."""
        try:
            path = self.backend.evidence_file(request.path_params["alert_id"])
        except AgentError as exc:
            return _agent_error(exc)
        return FileResponse(path, media_type="image/jpeg", content_disposition_type="inline")

    # ------------------------------------------------------------------ API

    async def api_cameras(self, _request: Request) -> Response:
        """``{"cameras": [...]}``."""
        return await self._api(lambda: {"cameras": self.backend.cameras()})

    async def api_zones(self, request: Request) -> Response:
        """The camera's zones and rule zones."""
        camera_id = request.path_params["camera_id"]
        return await self._api(lambda: self.backend.zones(camera_id))

    async def api_save_zones(self, request: Request) -> Response:
        """Save the zones and rule zones; 200 ``{"saved": true, "reload": ...}`` or 400."""
        camera_id = request.path_params["camera_id"]
        try:
            self.backend.zones(camera_id)  # an unknown camera is 404 whatever the body
            data = await _json_body(request)
        except NotFoundError as exc:
            return _agent_error(exc)
        except InvalidRequestError as exc:
            return _error(400, str(exc), problems=[str(exc)])
        zones, rules, problems = zones_body(data, camera_id)
        if problems:
            return _error(400, "the zones cannot be saved", problems=problems)
        who = actor(request)
        return await self._api(
            lambda: {"saved": True, "reload": self.backend.save_zones(camera_id, zones, rules, who)}
        )

    async def food_record(self, request: Request) -> Response:
        """Record a food zone's reference of the given state on the newest frame."""
        camera_id, zone = request.path_params["camera_id"], request.path_params["zone"]
        try:
            data = await _json_body(request)
        except InvalidRequestError as exc:
            return _error(400, str(exc))
        state = data.get("state") if isinstance(data, dict) else None
        if not isinstance(state, str):
            return _error(400, 'give {"state": "covered" | "uncovered" | "empty"}')
        who = actor(request)
        return await self._api(lambda: self.backend.food_record(camera_id, zone, state, who))

    async def food_test(self, request: Request) -> Response:
        """Classify a food zone on the newest frame."""
        camera_id, zone = request.path_params["camera_id"], request.path_params["zone"]
        return await self._api(lambda: self.backend.food_test(camera_id, zone))

    async def api_health(self, _request: Request) -> Response:
        """Checks, the last heartbeat and the alarm."""
        return await self._api(self.backend.health)

    async def api_alerts(self, request: Request) -> Response:
        """``{"alerts": [...]}``: the newest ``limit`` (1..500, default 50)."""
        text = request.query_params.get("limit", str(DEFAULT_ALERTS))
        if not text.isdigit() or not 1 <= int(text) <= MAX_ALERTS:
            return _error(400, f"limit must be a whole number from 1 to {MAX_ALERTS}")
        return await self._api(lambda: {"alerts": self.backend.alerts(int(text))})

    async def mute(self, request: Request) -> Response:
        """Mute the alarm for ``minutes`` (JSON; a form post returns to the health page)."""
        form = _is_form(request)
        if form:
            fields = await request.form()
            text = _text(fields.get("minutes")) or ""
            minutes: object = float(text) if _is_float(text) else text
        else:
            try:
                data = await _json_body(request)
            except InvalidRequestError as exc:
                return _error(400, str(exc))
            minutes = data.get("minutes") if isinstance(data, dict) else None
        who = actor(request)
        response = await self._api(lambda: self.backend.mute(minutes, who))
        return _back_to_health(response) if form else response

    async def unmute(self, request: Request) -> Response:
        """End the mute."""
        who = actor(request)
        response = await self._api(lambda: self.backend.unmute(who))
        return _back_to_health(response) if _is_form(request) else response

    async def not_found(self, request: Request, _exc: Exception) -> Response:
        """No such route: JSON for the API and images, the not-found page otherwise."""
        path = request.url.path
        if path.startswith(("/api/", STATIC_PREFIX)) or path.endswith(".jpg"):
            return _error(404, "not found")
        return self._render(request, "not_found.html", {"what": path}, status=404)

    async def healthz(self, _request: Request) -> Response:
        """Liveness for a monitor: no login, nothing about the box."""
        return _json({"ok": True})


def _agent_error(exc: AgentError) -> Response:
    """The status and JSON body of one of the agent's errors."""
    if isinstance(exc, NotFoundError):
        return _error(404, str(exc))
    if isinstance(exc, NoFrameError):
        return _error(503, str(exc))
    if isinstance(exc, InvalidRequestError):
        return _error(400, str(exc))
    if isinstance(exc, ConfigError):
        return _error(400, str(exc), problems=exc.problems)
    if isinstance(exc, StoreError):
        logger.error("installer page: %s", exc)
        return _error(503, str(exc))
    logger.error("installer page: %s", exc)
    return _error(500, str(exc))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    )


def _back_to_health(response: Response) -> Response:
    """A form's answer: back to the health page when it worked, the error otherwise."""
    if response.status_code == 200:
        return RedirectResponse("/health", status_code=303)
    return response


def _templates(directory: Path) -> Jinja2Templates:
    """Templates with autoescaping on for every file (names and zones are the installer's)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return Jinja2Templates(env=env)


def make_app(
    backend: WebBackend,
    config: WebConfig,
    *,
    templates_dir: Path = TEMPLATES_DIR,
    static_dir: Path = STATIC_DIR,
) -> Starlette:
    """The installer page for ``backend``, with ``config``'s sessions and login limit."""
    page = _Page(backend, config, _templates(templates_dir))
    routes: list[tuple[str, Handler, list[str]]] = [
        ("/login", page.login_page, ["GET"]),
        ("/login", page.login, ["POST"]),
        ("/logout", page.logout, ["POST"]),
        ("/healthz", page.healthz, ["GET"]),
        ("/", page.cameras_page, ["GET"]),
        ("/cameras/{camera_id}", page.camera_page, ["GET"]),
        ("/cameras/{camera_id}/snapshot.jpg", page.snapshot, ["GET"]),
        ("/health", page.health_page, ["GET"]),
        ("/alerts", page.alerts_page, ["GET"]),
        ("/alerts/{alert_id}/evidence.jpg", page.evidence, ["GET"]),
        ("/api/cameras", page.api_cameras, ["GET"]),
        ("/api/cameras/{camera_id}/zones", page.api_zones, ["GET"]),
        ("/api/cameras/{camera_id}/zones", page.api_save_zones, ["PUT"]),
        ("/api/cameras/{camera_id}/food/{zone}/record", page.food_record, ["POST"]),
        ("/api/cameras/{camera_id}/food/{zone}/test", page.food_test, ["POST"]),
        ("/api/health", page.api_health, ["GET"]),
        ("/api/alerts", page.api_alerts, ["GET"]),
        ("/api/alarm/mute", page.mute, ["POST"]),
        ("/api/alarm/unmute", page.unmute, ["POST"]),
    ]
    app = Starlette(
        routes=[
            *(Route(path, endpoint, methods=methods) for path, endpoint, methods in routes),
            Mount("/static", StaticFiles(directory=str(static_dir)), name="static"),
        ],
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(_Guard, sessions=page.sessions),
        ],
        exception_handlers={404: page.not_found},
    )
    app.state.page = page  # tests reach the sessions and the limiter through it
    return app
