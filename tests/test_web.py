"""The local installer page (agent/web, agent/service/web.py): login, CSRF, zones saved through
the CLI's validation, snapshots, food references, health, alerts and the mute.

The page is served by Starlette's TestClient from a real backend: the service's
``AgentWebBackend`` of a real ``Agent`` (synthetic model, SQLite store, a config file with
comments), never run, whose newest frames are put where the detect thread puts them. One
test serves it with the real uvicorn ``WebServer`` over HTTP, one runs the agent with it.
"""

from __future__ import annotations

import base64
import logging
import re
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from agent.cli.main import app as cli
from agent.config import WebTlsConfig, load_config, parse_config
from agent.errors import ConfigError, PasswordHashError, WebError
from agent.ingest.frames import Frame
from agent.install.provision import store_secret
from agent.records import AlertRecord, Detection
from agent.service.agent import Agent
from agent.web.app import CONTENT_SECURITY_POLICY, SNAPSHOT_TTL, make_app
from agent.web.auth import (
    LOGIN_WINDOW,
    LoginLimiter,
    Sessions,
    hash_password,
    verify_password,
)
from agent.web.server import WebServer
from mclz_testkit.common import free_port
from mclz_testkit.pki import Pki
from mclz_testkit.synthetic_model import build_pattern_model

PASSWORD = "炒锅-wok-2026"
CAMERA = "kitchen-1"
CONFIG = """\
# The test box: every comment here must survive a save from the page.
identity: {{city: hz, school_id: s-001, box_id: box-01}}
mqtt:
  url: mqtt://127.0.0.1:{closed}
cameras:
  kitchen-1:
    name: 后厨操作间          # shown on the page
    url: rtsp://127.0.0.1:{closed}/kitchen
    zones:                    # the installer's zones
      prep:
        name: 切配区          # where food is cut
        polygon: [[0.05, 0.40], [0.60, 0.40], [0.60, 0.98], [0.05, 0.98]]
      rice:
        polygon: [[0.62, 0.60], [0.78, 0.60], [0.78, 0.80], [0.62, 0.80]]
        food: true            # a food zone
  serving-line:
    name: "<script>alert(1)</script>"
    url: rtsp://127.0.0.1:{closed}/serving
model:
  path: {model}
rules:
  no_hat:
    labels: [head_bare]
    zones: [prep]             # only where food is prepared
  food_uncovered:
    labels: [food_uncovered]
    zones: ["@food"]
storage:
  state_dir: {state}
web:
  enabled: true
  listen: "127.0.0.1:{port}"
  login_attempts: 3
"""
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
WHO = "web:testclient"  # Starlette's TestClient connects from this "address"
runner = CliRunner()


@dataclass
class Box:
    """A real agent (never run) with its config file, credential store and the page."""

    agent: Agent
    path: Path
    creds: Path
    client: TestClient

    @property
    def evidence_dir(self) -> Path:
        return self.agent.config.storage.state_dir / "evidence"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic detector, built once."""
    return build_pattern_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def box(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Box]:
    """The page over a real Agent on a real config file and SQLite store."""
    creds = tmp_path / "credentials"
    store_secret(creds, "web-password", hash_password(PASSWORD))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("MCLZ_CREDENTIALS_DIR", str(creds))
    path = tmp_path / "agent.yaml"
    path.write_text(
        CONFIG.format(
            closed=free_port(), model=model_dir, state=tmp_path / "state", port=free_port()
        ),
        encoding="utf-8",
    )
    agent = Agent(load_config(path), path)
    client = TestClient(make_app(agent.web_backend, agent.config.web), follow_redirects=False)
    try:
        yield Box(agent, path, creds, client)
    finally:
        client.close()
        agent.detector.close()
        agent.outbox.close()


def picture(value: int = 90, width: int = 640, height: int = 360) -> np.ndarray:
    """A plain grey BGR frame."""
    return np.full((height, width, 3), value, dtype=np.uint8)


def put_frame(
    box: Box, image: np.ndarray, detections: list[Detection] | None = None, camera: str = CAMERA
) -> None:
    """Hand the agent a frame and its detections the way the detect thread does."""
    box.agent.cameras.last_frames[camera] = Frame(
        camera, image, time.time(), time.monotonic(), True
    )
    box.agent.cameras.detections[camera] = detections or []


def decode(jpeg: bytes) -> np.ndarray:
    """A JPEG as a BGR array (fails the test when it does not decode)."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return np.asarray(image)


def login(client: TestClient, password: str = PASSWORD) -> str:
    """Log in through the form; return the CSRF token the pages carry."""
    form = client.get("/login")
    token = CSRF_FIELD.search(form.text)
    assert token, form.text
    done = client.post("/login", data={"csrf": token.group(1), "password": password})
    assert done.status_code == 303, done.text
    page = client.get("/")
    meta = CSRF_META.search(page.text)
    assert meta, page.text
    return meta.group(1)


def try_login(client: TestClient, password: str) -> Any:
    form = client.get("/login")
    token = CSRF_FIELD.search(form.text)
    assert token
    return client.post("/login", data={"csrf": token.group(1), "password": password})


def zones_body(box: Box) -> dict[str, Any]:
    body = box.client.get(f"/api/cameras/{CAMERA}/zones").json()
    assert isinstance(body, dict)
    return body


def web_log(box: Box) -> list[dict[str, Any]]:
    return [r for r in box.agent.outbox.command_log(50) if r["source"] != "platform"]


def assert_security_headers(response: Any, *, static: bool = False) -> None:
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    if not static:
        assert response.headers["cache-control"] == "no-store"


# --------------------------------------------------------------------------- the password hash


def test_hash_has_the_scrypt_format_and_verifies() -> None:
    """A hash is scrypt$16384$8$1$<16-byte salt>$<hash>, salted afresh each time, and only
    the right password verifies against it."""
    stored = hash_password(PASSWORD)
    match = re.fullmatch(r"scrypt\$16384\$8\$1\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", stored)
    assert match, stored
    assert len(base64.b64decode(match.group(1))) == 16
    assert hash_password(PASSWORD) != stored
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, PASSWORD + " ")
    assert not verify_password(stored, "")


@pytest.mark.parametrize(
    ("stored", "says"),
    [
        ("plain-password", "1 '$'-separated part(s), not 6"),
        ("bcrypt$16384$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "not scrypt"),
        ("scrypt$many$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "not whole numbers"),
        ("scrypt$1000$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "out of range"),
        ("scrypt$1048576$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "out of range"),
        ("scrypt$16384$8$1$not*base64$aGFzaGhhc2hoYXNoaGFzaA==", "not base64"),
        ("scrypt$16384$8$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==", "too short"),
    ],
)
def test_a_malformed_hash_is_refused_naming_what_is_wrong(stored: str, says: str) -> None:
    """verify_password raises PasswordHashError saying which part is wrong (never the value)."""
    with pytest.raises(PasswordHashError) as info:
        verify_password(stored, PASSWORD)
    assert says in str(info.value)
    assert stored not in str(info.value)


def test_sessions_end_when_idle_and_at_logout() -> None:
    """A session lives while it is used within the timeout, ends when idle or logged out;
    tokens are random and 32 bytes."""
    now = [0.0]
    sessions = Sessions(600.0, clock=lambda: now[0])
    one, two = sessions.create("10.0.0.1"), sessions.create("10.0.0.2")
    assert one.token != two.token
    assert one.csrf != one.token
    assert len(one.token) >= 43  # 32 bytes, URL-safe base64
    now[0] = 500.0
    assert sessions.get(one.token) is one  # used: its idle time restarts
    now[0] = 900.0
    assert sessions.get(one.token) is one
    assert sessions.get(two.token) is None  # idle for 900 s
    assert sessions.end(one.token)
    assert sessions.get(one.token) is None
    assert sessions.get("forged") is None
    assert sessions.get(None) is None


def test_login_limit_is_a_sliding_window_per_address() -> None:
    """Three failures in the window lock the address out until the oldest leaves it;
    another address is not affected; a success clears the count."""
    now = [0.0]
    limiter = LoginLimiter(3, clock=lambda: now[0])
    for t in (0.0, 100.0, 200.0):
        now[0] = t
        assert limiter.retry_after("a") is None
        limiter.failure("a")
    wait = limiter.retry_after("a")
    assert wait == pytest.approx(LOGIN_WINDOW - 200.0)
    assert limiter.retry_after("b") is None
    now[0] = LOGIN_WINDOW + 1.0  # the first failure left the window
    assert limiter.retry_after("a") is None
    limiter.failure("a")
    assert limiter.retry_after("a") is not None
    limiter.success("a")
    assert limiter.retry_after("a") is None


# --------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("web", "problem"),
    [
        (
            "web: {listen: '0.0.0.0:8080'}",
            "agent.yaml:3 web.listen: '0.0.0.0:8080' means every network of the box",
        ),
        ("web: {listen: '[::]:8080'}", "agent.yaml:3 web.listen: '[::]:8080' means every network"),
        ("web: {listen: ':8080'}", "agent.yaml:3 web.listen: ':8080' means every network"),
        (
            "web: {listen: '192.168.1.20:70000'}",
            "agent.yaml:3 web.listen: '192.168.1.20:70000': bad port '70000'",
        ),
        (
            "web: {listen: '192.168.1.20'}",
            "agent.yaml:3 web.listen: '192.168.1.20' is not HOST:PORT",
        ),
        (
            "web: {listen: 'kitchen-box:8080'}",
            "agent.yaml:3 web.listen: 'kitchen-box:8080': the host must be an IP address",
        ),
        (
            "web: {tls: on}",
            "agent.yaml:3 web.tls: must be off or {cert_file: PATH, key_file: PATH}",
        ),
        (
            "web: {tls: {cert_file: a.crt}}",
            "agent.yaml:3 web.tls.key_file: required key is missing",
        ),
        ("web: {session_timeout: 10s}", "agent.yaml:3 web.session_timeout: Input should be"),
        ("web: {login_attempts: 0}", "agent.yaml:3 web.login_attempts: Input should be"),
    ],
)
def test_web_settings_are_refused_with_their_location(web: str, problem: str) -> None:
    """Every address (0.0.0.0, [::], an empty host) without allow_any_address, a bad port,
    a host name, TLS half given: a located config error like the other sections'."""
    text = "identity: {city: hz, school_id: s1, box_id: b1}\n\n" + web + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "agent.yaml")
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_web_settings_that_are_accepted() -> None:
    """Defaults: off, 127.0.0.1:8080, no TLS, the credential web-password, 8 h, 5 attempts;
    every address only when allowed; YAML's bare `off` is off; paths are the file's."""
    base = "identity: {city: hz, school_id: s1, box_id: b1}\n"
    web = parse_config(base).web
    assert (web.enabled, web.host, web.port, web.tls) == (False, "127.0.0.1", 8080, None)
    assert web.password.credential == "web-password"
    assert (web.session_timeout, web.login_attempts) == (8 * 3600, 5)
    anywhere = parse_config(base + "web: {listen: '[::]:8443', allow_any_address: true}").web
    assert (anywhere.host, anywhere.port) == ("::", 8443)
    assert parse_config(base + "web: {tls: off}").web.tls is None
    tls = parse_config(base + "web: {tls: {cert_file: w.crt, key_file: w.key}}").web
    assert tls.use_tls
    secrets = [w for w, _ in parse_config(base + "web: {enabled: true}").secret_refs()]
    assert "web.password" in secrets  # checked by config check only when the page is on
    assert "web.password" not in [w for w, _ in parse_config(base).secret_refs()]


# --------------------------------------------------------------------------- login


def test_login_opens_a_session_with_a_strict_http_only_cookie(box: Box) -> None:
    """The right password: 303 to /, an HttpOnly SameSite=Strict cookie on / (not Secure
    without TLS), pages with the CSRF token in a meta tag, the login recorded."""
    form = box.client.get("/login")
    assert form.status_code == 200
    assert_security_headers(form)
    assert "mclz_login_csrf=" in form.headers["set-cookie"]
    token = CSRF_FIELD.search(form.text)
    assert token
    done = box.client.post("/login", data={"csrf": token.group(1), "password": PASSWORD})
    assert done.status_code == 303
    assert done.headers["location"] == "/"
    cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith("mclz_session="))
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes
    page = box.client.get("/")
    assert page.status_code == 200
    assert CSRF_META.search(page.text)
    assert "后厨操作间" in page.text
    assert web_log(box)[0]["command"] == "login"
    assert (web_log(box)[0]["source"], web_log(box)[0]["ok"]) == (WHO, True)


def test_a_wrong_password_is_401_recorded_and_never_logged(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password: 401 with 密码错误, no session, recorded as a failed login; the
    password appears in no log line and in no record."""
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-wok-password"
    refused = try_login(box.client, wrong)
    assert refused.status_code == 401
    assert "密码错误 (wrong password)" in refused.text
    assert box.client.get("/").status_code == 303
    record = web_log(box)[0]
    assert (record["command"], record["source"], record["ok"]) == ("login", WHO, False)
    assert wrong not in record["payload"]
    assert not any(wrong in r.getMessage() for r in caplog.records)
    assert not any(PASSWORD in r.getMessage() for r in caplog.records)


def test_too_many_failures_lock_the_address_out(box: Box) -> None:
    """After login_attempts (3) failures the address gets 429 with Retry-After, even with
    the right password."""
    for _ in range(3):
        assert try_login(box.client, "wrong-password").status_code == 401
    locked = try_login(box.client, PASSWORD)
    assert locked.status_code == 429
    assert 0 < int(locked.headers["retry-after"]) <= LOGIN_WINDOW
    assert box.client.get("/").status_code == 303


def test_login_needs_its_csrf_cookie(box: Box) -> None:
    """A login post without the double-submit token (a forged cross-site form) is 403."""
    box.client.get("/login")
    forged = box.client.post("/login", data={"csrf": "guessed", "password": PASSWORD})
    assert forged.status_code == 403
    assert forged.json() == {"error": "missing or wrong CSRF token"}
    assert box.client.get("/").status_code == 303


def test_without_a_session_pages_redirect_and_the_api_answers_401(box: Box) -> None:
    """Not logged in: pages 303 to /login, the API 401 JSON, changes 401; /healthz, the
    login form and static files need no session; every answer has the security headers."""
    for path in (
        "/",
        f"/cameras/{CAMERA}",
        "/health",
        "/alerts",
        f"/cameras/{CAMERA}/snapshot.jpg",
    ):
        response = box.client.get(path)
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path
        assert_security_headers(response)
    for path in ("/api/cameras", f"/api/cameras/{CAMERA}/zones", "/api/health", "/api/alerts"):
        response = box.client.get(path)
        assert response.status_code == 401, path
        assert response.json() == {"error": "not logged in"}
    put = box.client.put(f"/api/cameras/{CAMERA}/zones", json={"zones": {}, "rules": {}})
    assert put.status_code == 401
    assert box.client.post("/api/alarm/mute", json={"minutes": 5}).status_code == 401
    box.client.cookies.set("mclz_session", "forged")
    assert box.client.get("/api/cameras").status_code == 401
    box.client.cookies.clear()
    assert box.client.get("/healthz").json() == {"ok": True}
    css = box.client.get("/static/style.css")
    assert css.status_code == 200
    assert_security_headers(css, static=True)
    assert "no-store" not in css.headers.get("cache-control", "")


def test_logout_ends_the_session(box: Box) -> None:
    """POST /logout with the token: 303 to /login and the session is gone."""
    token = login(box.client)
    done = box.client.post("/logout", data={"csrf": token})
    assert (done.status_code, done.headers["location"]) == (303, "/login")
    assert box.client.get("/").status_code == 303
    assert [r["command"] for r in web_log(box)][:2] == ["logout", "login"]


# --------------------------------------------------------------------------- CSRF


def test_changes_without_the_csrf_token_are_refused_and_change_nothing(box: Box) -> None:
    """A logged-in browser tricked into a change without the token: 403 and nothing changes
    (the config file, the mute, the session)."""
    login(box.client)
    before = box.path.read_text("utf-8")
    body = zones_body(box)
    body["zones"]["prep"]["name"] = "改过"
    for headers in ({}, {"X-CSRF-Token": "wrong"}):
        refused = box.client.put(f"/api/cameras/{CAMERA}/zones", json=body, headers=headers)
        assert refused.status_code == 403
        assert refused.json() == {"error": "missing or wrong CSRF token"}
        assert_security_headers(refused)
    assert box.path.read_text("utf-8") == before
    refused_mute = box.client.post("/api/alarm/mute", json={"minutes": 30})
    assert refused_mute.status_code == 403
    assert box.agent.mute.until is None
    form_mute = box.client.post("/api/alarm/mute", data={"minutes": "30", "csrf": "wrong"})
    assert form_mute.status_code == 403
    assert box.client.post("/logout", data={}).status_code == 403
    assert box.client.get("/").status_code == 200  # still logged in
    assert [r["command"] for r in web_log(box)] == ["login"]


# --------------------------------------------------------------------------- zones


def test_zones_read_as_the_config_stores_them(box: Box) -> None:
    """GET zones: the polygons (0..1), names (Chinese; null when unset), exclude, food, the
    zones each rule uses on this camera ('@food' as written), the picture's size."""
    login(box.client)
    put_frame(box, picture(width=640, height=360))
    body = zones_body(box)
    assert (body["camera"], body["width"], body["height"]) == (CAMERA, 640, 360)
    assert body["zones"]["prep"] == {
        "name": "切配区",
        "polygon": [[0.05, 0.4], [0.6, 0.4], [0.6, 0.98], [0.05, 0.98]],
        "exclude": False,
        "food": False,
    }
    assert body["zones"]["rice"]["name"] is None
    assert body["zones"]["rice"]["food"] is True
    assert body["rules"] == {"no_hat": ["prep"], "food_uncovered": ["@food"]}
    assert box.client.get("/api/cameras/nope/zones").status_code == 404


def test_saved_zones_reach_the_file_with_its_comments_and_the_running_agent(box: Box) -> None:
    """PUT zones: saved through the CLI's comment-keeping edit, the agent reloads (its rule
    engine and config see the new zone, no camera reconnects), the change is recorded."""
    token = login(box.client)
    body = zones_body(box)
    body["zones"]["wash"] = {
        "name": "洗碗区",
        "polygon": [[0.1, 0.1], [0.3, 0.1], [0.3, 0.3], [0.1, 0.3]],
        "exclude": False,
        "food": False,
    }
    body["zones"]["tv"] = {
        "name": None,
        "polygon": [[0.8, 0.05], [0.98, 0.05], [0.98, 0.3]],
        "exclude": True,
        "food": False,
    }
    body["rules"]["no_hat"] = ["prep", "wash"]
    saved = box.client.put(
        f"/api/cameras/{CAMERA}/zones", json=body, headers={"X-CSRF-Token": token}
    )
    assert saved.status_code == 200, saved.text
    result = saved.json()
    assert result["saved"] is True
    assert result["reload"]["applied"] == ["cameras"]
    assert result["reload"]["cameras_restarted"] == []
    text = box.path.read_text("utf-8")
    for comment in (
        "# The test box: every comment here must survive a save from the page.",
        "# shown on the page",
        "# the installer's zones",
        "# where food is cut",
        "# a food zone",
        "# only where food is prepared",
    ):
        assert comment in text, comment
    assert "洗碗区" in text
    config = load_config(box.path)  # the file is valid: config check would pass
    assert config.cameras[CAMERA].zones["tv"].exclude
    assert config.cameras[CAMERA].rules["no_hat"].zones == ("prep", "wash")
    assert config.rules["no_hat"].zones == ("prep",)  # the rule itself is untouched
    running = box.agent.config.cameras[CAMERA]
    assert set(running.zones) == {"prep", "rice", "wash", "tv"}
    again = zones_body(box)
    assert again["zones"]["wash"]["name"] == "洗碗区"
    assert again["rules"]["no_hat"] == ["prep", "wash"]
    record = web_log(box)[0]
    assert (record["command"], record["source"], record["ok"]) == ("zones", WHO, True)
    assert "洗碗区" in record["payload"]


def check_problems(path: Path) -> list[str]:
    """What `mclz-agent config check` says is wrong with the file at ``path``."""
    result = runner.invoke(cli, ["config", "check", str(path), "--no-secrets"])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    listed = [line.strip() for line in lines if line.startswith("  ")]
    return listed or [lines[0].removeprefix("error: ")]


@pytest.mark.parametrize(
    ("polygon", "written"),
    [
        ([[0.1, 0.4], [0.6, 0.4]], "[[0.1, 0.4], [0.6, 0.4]]"),
        (
            [[0.0, 0.0], [0.6, 0.6], [0.6, 0.0], [0.0, 0.3]],
            "[[0.0, 0.0], [0.6, 0.6], [0.6, 0.0], [0.0, 0.3]]",
        ),
    ],
    ids=["two-points", "crossing"],
)
def test_a_malformed_polygon_is_refused_with_config_checks_message(
    box: Box, tmp_path: Path, polygon: list[list[float]], written: str
) -> None:
    """A 2-point or self-crossing polygon: 400 with the very problem `config check` prints
    for the same file, and the file is untouched."""
    token = login(box.client)
    before = box.path.read_text("utf-8")
    body = zones_body(box)
    body["zones"]["prep"]["polygon"] = polygon
    refused = box.client.put(
        f"/api/cameras/{CAMERA}/zones", json=body, headers={"X-CSRF-Token": token}
    )
    assert refused.status_code == 400, refused.text
    problems = refused.json()["problems"]
    assert box.path.read_text("utf-8") == before
    copy = tmp_path / "by-hand" / "agent.yaml"
    copy.parent.mkdir()
    old = "[[0.05, 0.40], [0.60, 0.40], [0.60, 0.98], [0.05, 0.98]]"
    copy.write_text(before.replace(old, written), "utf-8")
    expected = [p.replace(str(copy), str(box.path)) for p in check_problems(copy)]
    assert problems == expected
    assert "cameras.kitchen-1.zones.prep.polygon" in problems[0]


def test_zone_body_shape_and_references_are_checked(box: Box) -> None:
    """Not JSON, a zone without corners as a list, a flag that is not a boolean: 400 with
    what is wrong; a zone id the config refuses and a rule without that zone: the config's
    own messages; an unknown camera: 404."""
    token = login(box.client)
    headers = {"X-CSRF-Token": token, "Content-Type": "application/json"}
    url = f"/api/cameras/{CAMERA}/zones"
    assert box.client.put(url, content=b"{not json", headers=headers).status_code == 400
    shape = box.client.put(
        url,
        json={"zones": {"a": {"polygon": "0,0 1,1", "food": "yes"}}, "rules": {}},
        headers=headers,
    )
    assert shape.status_code == 400
    assert shape.json()["problems"] == [
        "zones.a.polygon: must be a list of [x, y] points (numbers 0..1)",
        "zones.a.food: must be true or false",
    ]
    body = zones_body(box)
    body["zones"]["备餐区"] = body["zones"].pop("rice")
    refused = box.client.put(url, json=body, headers=headers)
    assert refused.status_code == 400
    assert any("zone id '备餐区' must match" in p for p in refused.json()["problems"])
    body = zones_body(box)
    del body["zones"]["prep"]  # rules.no_hat still names it
    dangling = box.client.put(url, json=body, headers=headers)
    assert dangling.status_code == 400
    assert any("no camera has a zone 'prep'" in p for p in dangling.json()["problems"])
    assert box.client.put("/api/cameras/nope/zones", json=body, headers=headers).status_code == 404


# --------------------------------------------------------------------------- snapshots


def test_snapshot_is_the_newest_frame_with_its_detections_drawn(box: Box) -> None:
    """The JPEG decodes to the frame's size; with detections=1 the boxes are drawn in red as
    on the evidence; a camera without a frame is 503, an unknown one 404."""
    login(box.client)
    box_norm = (0.25, 0.25, 0.5, 0.75)
    put_frame(box, picture(90, 800, 450), [Detection("head_bare", 0, 0.91, box_norm)])
    plain = box.client.get(f"/cameras/{CAMERA}/snapshot.jpg")
    drawn = box.client.get(f"/cameras/{CAMERA}/snapshot.jpg?detections=1")
    for response in (plain, drawn):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert_security_headers(response)
    images = [decode(r.content) for r in (plain, drawn)]
    assert images[0].shape == images[1].shape == (450, 800, 3)

    def red(image: np.ndarray) -> int:
        b, g, r = (image[..., i].astype(int) for i in range(3))
        return int(np.sum((r > 150) & (g < 100) & (b < 100)))

    assert red(images[1]) > 500  # the box's outline and its label
    assert red(images[0]) == 0
    missing = box.client.get("/cameras/serving-line/snapshot.jpg")
    assert missing.status_code == 503
    assert missing.json() == {"error": "camera serving-line has no frame yet"}
    assert box.client.get("/cameras/nope/snapshot.jpg").status_code == 404


def test_snapshots_are_encoded_at_most_four_times_a_second(box: Box) -> None:
    """Within 0.25 s the same JPEG is served again (a tab refreshing fast costs nothing);
    after it, the newest frame."""
    login(box.client)
    put_frame(box, picture(40))
    url = f"/cameras/{CAMERA}/snapshot.jpg"
    started = time.monotonic()
    first = box.client.get(url).content
    put_frame(box, picture(200))
    second = box.client.get(url).content
    if time.monotonic() - started < SNAPSHOT_TTL:
        assert second == first
    time.sleep(SNAPSHOT_TTL + 0.05)
    third = box.client.get(url).content
    assert third != first
    assert abs(int(decode(third).mean()) - 200) < 5


# --------------------------------------------------------------------------- pages


def test_pages_render_escaped_with_the_editors_elements(box: Box) -> None:
    """Cameras, a camera (snapshot img, editor canvas, zones.js), health and alerts render;
    a camera name with markup is escaped; an unknown camera is a 404 page."""
    login(box.client)
    cameras = box.client.get("/")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in cameras.text
    assert "<script>alert(1)" not in cameras.text
    for label in ("摄像头 (Cameras)", "健康 (Health)", "报警 (Alerts)", "退出 (Logout)"):
        assert label in cameras.text
    camera = box.client.get(f"/cameras/{CAMERA}")
    assert camera.status_code == 200
    for element in ('<img id="snapshot"', '<canvas id="editor"', '<script src="/static/zones.js">'):
        assert element in camera.text, element
    assert "切配区" in camera.text
    assert box.client.get("/cameras/nope").status_code == 404
    assert box.client.get("/health").status_code == 200
    assert box.client.get("/alerts").status_code == 200


def test_cameras_api_lists_every_camera_with_its_figures(box: Box) -> None:
    """Each camera: id, name, state, fps, quality, last outage, picture size (from its frame)."""
    login(box.client)
    put_frame(box, picture(width=640, height=360))
    box.agent.outbox.open_outage("serving-line", time.time() - 60, "timeout")
    cameras = box.client.get("/api/cameras").json()["cameras"]
    assert [c["id"] for c in cameras] == [CAMERA, "serving-line"]
    first = cameras[0]
    assert set(first) == {
        "id", "name", "state", "fps", "quality", "last_outage", "width", "height"
    }  # fmt: skip
    assert (first["name"], first["state"], first["width"], first["height"]) == (
        "后厨操作间",
        "connecting",
        640,
        360,
    )
    outage = cameras[1]["last_outage"]
    assert outage["until"] is None
    assert outage["reason"] == "timeout"


# --------------------------------------------------------------------------- food zones


def textured(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)


def test_food_references_are_recorded_and_tested_on_the_newest_frame(box: Box) -> None:
    """record covered / uncovered on the agent's frames (food calibrate's code) stores
    references the agent's monitor uses; test classifies the zone (food test's code)."""
    token = login(box.client)
    headers = {"X-CSRF-Token": token}
    url = f"/api/cameras/{CAMERA}/food/rice"
    put_frame(box, picture(120))
    covered = box.client.post(f"{url}/record", json={"state": "covered"}, headers=headers)
    assert covered.status_code == 200, covered.text
    assert covered.json()["references"] == {"covered": 1, "uncovered": 0, "empty": 0}
    assert covered.json()["ready"] is False
    put_frame(box, textured(1))
    uncovered = box.client.post(f"{url}/record", json={"state": "uncovered"}, headers=headers)
    assert uncovered.json()["ready"] is True
    assert len(box.agent.runtime.food.store.references(CAMERA, "rice")) == 2
    put_frame(box, textured(2))
    tested = box.client.post(f"{url}/test", headers=headers)
    assert tested.status_code == 200, tested.text
    result = tested.json()
    assert (result["camera"], result["zone"], result["state"]) == (CAMERA, "rice", "uncovered")
    assert result["references"] == {"covered": 1, "uncovered": 1, "empty": 0}
    records = [r for r in web_log(box) if r["command"] == "food_record"]
    assert [r["ok"] for r in records] == [True, True]


def test_food_requests_that_cannot_be_served(box: Box) -> None:
    """A state that is not one, a zone that is not food, no frame yet, no token."""
    token = login(box.client)
    headers = {"X-CSRF-Token": token}
    url = f"/api/cameras/{CAMERA}/food"
    no_frame = box.client.post(f"{url}/rice/record", json={"state": "covered"}, headers=headers)
    assert no_frame.status_code == 503
    put_frame(box, picture(120))
    wrong_state = box.client.post(f"{url}/rice/record", json={"state": "open"}, headers=headers)
    assert wrong_state.status_code == 400
    assert "state must be one of covered, uncovered, empty" in wrong_state.json()["error"]
    not_food = box.client.post(f"{url}/prep/test", headers=headers)
    assert not_food.status_code == 400
    assert "is not a food zone" in not_food.json()["error"]
    assert box.client.post(f"{url}/rice/record", json={"state": "covered"}).status_code == 403
    assert box.agent.runtime.food.store.references(CAMERA, "rice") == []


# --------------------------------------------------------------------------- health, alerts


def test_health_has_the_cheap_checks_the_heartbeat_and_the_alarm(box: Box) -> None:
    """The check verdicts that are safe in a running agent, the last heartbeat (none before
    the first), the mute and the alarm's decisions."""
    login(box.client)
    health = box.client.get("/api/health").json()
    assert [c["name"] for c in health["checks"]] == ["config", "clock", "disk", "systemd"]
    assert all(c["status"] in {"ok", "warn", "FAIL"} for c in health["checks"])
    assert health["checks"][0]["status"] == "ok", health["checks"][0]
    assert health["heartbeat"] is None
    assert health["alarm"] == {"muted_until": None, "decisions": []}
    box.agent.health.send_heartbeat()
    beat = box.client.get("/api/health").json()["heartbeat"]
    assert beat["cameras_total"] == 2
    assert beat["box"]["box_id"] == "box-01"


def test_mute_and_unmute_are_the_platforms_and_recorded(box: Box) -> None:
    """Mute sets the same Mute the platform's command does (stored with the page as its
    source); a bad number is 400; unmute ends it; a form post returns to the health page."""
    token = login(box.client)
    headers = {"X-CSRF-Token": token}
    muted = box.client.post("/api/alarm/mute", json={"minutes": 30}, headers=headers)
    assert muted.status_code == 200
    until = box.agent.mute.until
    assert until is not None
    assert 29 * 60 < until - time.time() <= 30 * 60
    assert muted.json()["muted_until"].endswith("Z")
    assert box.agent.outbox.settings("alarm.muted_until")
    bad = box.client.post("/api/alarm/mute", json={"minutes": -5}, headers=headers)
    assert bad.status_code == 400
    assert "'minutes' must be a number from 0 to 1440" in bad.json()["error"]
    assert box.client.post("/api/alarm/unmute", headers=headers).json() == {"muted_until": None}
    assert not box.agent.mute.muted()
    form = box.client.post("/api/alarm/mute", data={"minutes": "10", "csrf": token})
    assert (form.status_code, form.headers["location"]) == (303, "/health")
    assert box.agent.mute.muted()
    commands = [(r["command"], r["ok"]) for r in web_log(box)]
    assert commands[:4] == [("mute", True), ("unmute", True), ("mute", False), ("mute", True)]
    assert all(r["source"] == WHO for r in web_log(box))


def record_alert(box: Box, alert_id: str, evidence_path: str | None) -> None:
    box.agent.outbox.record_alert(
        AlertRecord(
            id=alert_id,
            camera=CAMERA,
            type="no_hat",
            severity="warning",
            started_at=time.time() - 5,
            raised_at=time.time(),
            confidence=0.9,
            detections=[],
            evidence_path=evidence_path,
        ),
        "t/alert",
        b"{}",
    )


def test_evidence_is_served_only_from_the_evidence_directory(box: Box, tmp_path: Path) -> None:
    """An alert's image inside the evidence directory is served; a stored path that leads
    outside it (absolute, or with ..), a missing image, an unknown alert: 404."""
    login(box.client)
    inside = box.evidence_dir / "2026-12-01" / "a-in.jpg"
    inside.parent.mkdir(parents=True)
    ok, jpeg = cv2.imencode(".jpg", picture(70, 64, 48))
    assert ok
    inside.write_bytes(jpeg.tobytes())
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg.tobytes())
    record_alert(box, "a-in", str(inside))
    record_alert(box, "a-out", str(outside))
    record_alert(box, "a-dots", str(box.evidence_dir / ".." / "agent.db"))
    record_alert(box, "a-gone", str(box.evidence_dir / "2026-12-01" / "pruned.jpg"))
    record_alert(box, "a-none", None)
    served = box.client.get("/alerts/a-in/evidence.jpg")
    assert served.status_code == 200
    assert served.content == jpeg.tobytes()
    assert served.headers["content-type"] == "image/jpeg"
    for alert_id in ("a-out", "a-dots", "a-gone", "a-none", "nope", "..%2F..%2Fagent.db"):
        refused = box.client.get(f"/alerts/{alert_id}/evidence.jpg")
        assert refused.status_code == 404, alert_id
        assert "error" in refused.json()
    alerts = box.client.get("/api/alerts?limit=10").json()["alerts"]
    urls = {a["id"]: a["evidence_url"] for a in alerts}
    assert urls["a-in"] == "/alerts/a-in/evidence.jpg"
    assert urls["a-none"] is None
    assert box.client.get("/api/alerts?limit=2").json()["alerts"][0]["id"] == "a-none"
    for limit in ("0", "501", "ten"):
        assert box.client.get(f"/api/alerts?limit={limit}").status_code == 400


# --------------------------------------------------------------------------- serving


def test_the_real_server_serves_over_http_and_stops_within_two_seconds(box: Box) -> None:
    """uvicorn on a free loopback port, on a thread named web: /login over real HTTP with
    the security headers; a second server on the same port fails naming the address; stop
    ends the thread within 2 s."""
    config = box.agent.config.web
    server = WebServer(make_app(box.agent.web_backend, config), config)
    server.start()
    try:
        assert [t for t in threading.enumerate() if t.name == "web"]
        host, port = server.address
        assert (host, port) == ("127.0.0.1", config.port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as answer:
            page = answer.read().decode("utf-8")
            assert answer.status == 200
            assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert 'name="password"' in page
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/cameras", timeout=5)
        assert refused.value.code == 401
        refused.value.close()
        second = WebServer(make_app(box.agent.web_backend, config), config)
        with pytest.raises(WebError) as info:
            second.start()
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "another program listens there" in str(info.value)
    finally:
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
    assert took < 2.0
    assert not [t for t in threading.enumerate() if t.name == "web"]


def test_with_tls_the_page_is_https_and_its_cookies_are_secure(box: Box, test_pki: Pki) -> None:
    """web.tls: the server speaks HTTPS with the configured certificate (verified against its
    CA), the login cookies are Secure; unreadable TLS files fail the start naming web.tls."""
    tls = {"cert_file": test_pki.server_cert, "key_file": test_pki.server_key}
    config = box.agent.config.web.model_copy(update={"tls": WebTlsConfig(**tls)})
    server = WebServer(make_app(box.agent.web_backend, config), config)
    server.start()
    try:
        assert server.url == f"https://127.0.0.1:{config.port}/"
        context = ssl.create_default_context(cafile=str(test_pki.ca_cert))
        url = f"https://127.0.0.1:{config.port}/login"
        with urllib.request.urlopen(url, timeout=5, context=context) as answer:
            cookie = answer.headers["Set-Cookie"]
        assert cookie.startswith("mclz_login_csrf=")
        assert "secure" in {part.strip().lower() for part in cookie.split(";")}
        with pytest.raises((ConnectionError, urllib.error.URLError)):  # plain HTTP: refused
            urllib.request.urlopen(f"http://127.0.0.1:{config.port}/login", timeout=5)
    finally:
        server.stop()
    missing = config.model_copy(
        update={"tls": WebTlsConfig(cert_file=Path("/nonexistent.crt"), key_file=Path("k"))}
    )
    with pytest.raises(WebError) as info:
        WebServer(make_app(box.agent.web_backend, missing), missing).start()
    assert str(info.value).startswith("web.tls: cannot use the certificate and key")


def test_the_agent_serves_the_page_while_it_runs(box: Box) -> None:
    """Agent.run starts the page (web.enabled) and its shutdown stops it: /healthz answers
    over HTTP while the agent runs, no web thread is left after."""
    port = box.agent.config.web.port
    runner_thread = threading.Thread(target=box.agent.run, args=(4.0,), name="test-agent")
    runner_thread.start()
    try:
        deadline = time.monotonic() + 10
        answer = None
        while answer is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    answer = r.read()
            except OSError:
                time.sleep(0.1)
        assert answer == b'{"ok":true}'
    finally:
        runner_thread.join(20)
    assert not runner_thread.is_alive()
    assert box.agent.web is None
    assert not [t for t in threading.enumerate() if t.name == "web"]


def test_the_command_line_and_an_agent_without_the_page_load_no_web_stack() -> None:
    """starlette, uvicorn and jinja2 are imported only when the page is served."""
    code = (
        "import sys, agent.cli.main, agent.service.agent;"
        "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- web passwd


def test_web_passwd_keeps_only_a_hash_in_the_credential_store(box: Box) -> None:
    """web passwd asks twice (hidden), writes the scrypt hash as the credential (0600) that
    the page then accepts; two different answers or a short password change nothing."""
    new = "新的密码-2027"
    args = ["web", "passwd", "--config", str(box.path), "--credentials-dir", str(box.creds)]
    done = runner.invoke(cli, args, input=f"{new}\n{new}\n")
    assert done.exit_code == 0, done.output
    stored = box.creds / "web-password"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert new not in stored.read_text("utf-8")
    assert verify_password(stored.read_text("utf-8").strip(), new)
    assert "credential:web-password" in done.output
    login(box.client, new)
    before = stored.read_text("utf-8")
    differ = runner.invoke(cli, args, input="first-password\nsecond-password\n")
    assert differ.exit_code == 2
    assert "differ" in differ.output
    short = runner.invoke(cli, args, input="short\nshort\n")
    assert short.exit_code == 2
    assert "at least 8 characters" in short.output
    assert stored.read_text("utf-8") == before


def test_a_missing_password_hash_says_how_to_set_one(box: Box) -> None:
    """Without the credential the login page answers 503 naming web passwd; nothing is let in."""
    (box.creds / "web-password").unlink()
    answer = try_login(box.client, PASSWORD)
    assert answer.status_code == 503
    assert "mclz-agent web passwd" in answer.text
    assert box.client.get("/").status_code == 303
