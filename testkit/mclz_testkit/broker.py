"""A real mosquitto broker on a free loopback port, for tests, benchmarks and the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from mclz_testkit.common import (
    LOOPBACK,
    SBIN_PATH,
    MissingDependencyError,
    ServiceError,
    free_port,
    kill_process,
    port_accepts,
    tail,
    terminate_process,
)
from mclz_testkit.pki import Pki


def find_mosquitto() -> tuple[str, str]:
    """Return the paths of ``mosquitto`` and ``mosquitto_passwd``.

    Raises:
        MissingDependencyError: mosquitto is not installed.
    """
    search = f"{os.environ.get('PATH', '')}:{SBIN_PATH}"
    broker = shutil.which("mosquitto", path=search)
    passwd = shutil.which("mosquitto_passwd", path=search)
    if broker is None or passwd is None:
        raise MissingDependencyError(
            "mosquitto is not installed: apt-get install mosquitto (./scripts/test does it)"
        )
    return broker, passwd


class Broker:
    """A real mosquitto broker on a free loopback port, configured in ``workdir``.

    Anonymous by default; with ``users`` it requires one of those user names and passwords.
    The port is kept across ``stop``/``kill`` and ``restart``, so clients can reconnect.
    """

    host = LOOPBACK
    #: The address the listener binds; None binds ``host`` only.
    bind: str | None = None
    #: Words run before the mosquitto command (e.g. ``ip netns exec NAME``).
    launcher: tuple[str, ...] = ()

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        port: int = 0,
        tls: Pki | None = None,
        require_client_cert: bool = False,
    ) -> None:
        self.workdir = workdir
        self.users = dict(users or {})
        self.tls = tls
        self.require_client_cert = require_client_cert
        self._fixed_port = port != 0
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._binary, self._passwd_binary = find_mosquitto()
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self.password_path = workdir / "passwd"

    @property
    def url(self) -> str:
        """Return ``mqtt://127.0.0.1:PORT`` (``mqtts://`` with TLS)."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        """Return the broker URL carrying ``user:password@`` (percent-encoded)."""
        return f"mqtt://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Return whether the mosquitto process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log(self) -> str:
        """Return everything mosquitto logged so far (all runs)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.bind or self.host}",
            "persistence false",
            # Started as root, mosquitto would drop to user mosquitto and lose access to
            # root-owned 0600 files in the tmp dir.
            "user root",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        if self.users:
            self._write_passwords()
            lines += ["allow_anonymous false", f"password_file {self.password_path}"]
        else:
            lines.append("allow_anonymous true")
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _write_passwords(self) -> None:
        self.password_path.unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.users.items()):
            create = ["-c"] if i == 0 else []
            done = subprocess.run(
                [self._passwd_binary, *create, "-b", str(self.password_path), user, password],
                capture_output=True,
                check=False,
                timeout=10,
            )
            if done.returncode != 0:
                raise ServiceError(
                    f"mosquitto_passwd failed for {user!r}: {done.stderr.decode(errors='replace')}"
                )
        self.password_path.chmod(0o600)

    def start(self, timeout: float = 10.0) -> Broker:
        """Start mosquitto and wait until its port accepts TCP; return self.

        Raises:
            ServiceError: mosquitto exited or did not listen within ``timeout``.
        """
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3  # a free port may be taken before we bind it
        for attempt in range(attempts):
            self._write_config()
            try:
                self._spawn_and_wait(timeout)
            except ServiceError:
                if attempt + 1 == attempts:
                    raise
                self.port = free_port()
            else:
                self._fixed_port = True  # restarts must come back on the same port
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_and_wait(self, timeout: float) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*self.launcher, self._binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"mosquitto exited with {self._proc.returncode} on port {self.port}:\n"
                    f"{tail(self.log)}"
                )
            if port_accepts(self.host, self.port):
                return
            time.sleep(0.02)
        kill_process(self._proc)
        raise ServiceError(
            f"mosquitto did not listen on {self.url} within {timeout:.0f} s:\n{tail(self.log)}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop mosquitto with SIGTERM and wait for it to exit (SIGKILL if it hangs)."""
        if self._proc is not None:
            terminate_process(self._proc, timeout)

    def kill(self) -> None:
        """Kill mosquitto with SIGKILL, as in a crash or power cut."""
        if self._proc is not None:
            kill_process(self._proc)

    def restart(self, timeout: float = 10.0) -> Broker:
        """Stop mosquitto if it runs and start it again on the same port; return self."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Broker({self.url}, users={sorted(self.users)}, running={self.running})"
