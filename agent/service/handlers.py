"""The platform's commands and the config reload (``reload`` command and SIGHUP).

:meth:`Handlers.table` gives :class:`~agent.uplink.commands.Commands` one handler per
command; they run on paho's network thread. :meth:`Handlers.reload` re-reads the config
file under a lock (a command and SIGHUP may race) and applies what can change live:
rules, cameras (added, removed, changed ones restarted), evidence and heartbeat.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import __version__, evidence
from agent.config import CameraConfig, check_secrets, load_config
from agent.detect.food import FoodMonitor
from agent.errors import ConfigError, StoreError
from agent.rules.engine import RuleEngine
from agent.service.alerts import AlertWriter
from agent.service.health import Health
from agent.service.runtime import Cameras, Runtime
from agent.service.status import CameraStatus
from agent.service.systemd import sd_notify
from agent.store.store import Store
from agent.uplink import messages as contract
from agent.uplink.client import Uplink
from agent.uplink.commands import CommandError, Handler
from agent.uplink.overrides import Mute, RuleOverrides, apply_live, diff_config, effective_rules

logger = logging.getLogger(__name__)

#: A camera's settings its reader does not use: the rule engine, the food monitor and the
#: evidence read them from the config in force at each use, so a change to them (zones
#: drawn on the installer page) applies without reconnecting the camera.
LIVE_CAMERA_FIELDS = ("name", "zones", "rules")


def reader_settings(camera: CameraConfig) -> CameraConfig:
    """``camera`` without :data:`LIVE_CAMERA_FIELDS`: what a reader restarts for."""
    return camera.model_copy(update={"name": "", "zones": {}, "rules": {}})


class Handlers:
    """The command handlers and the config reload."""

    def __init__(
        self,
        runtime: Runtime,
        cameras: Cameras,
        status: CameraStatus,
        health: Health,
        writer: AlertWriter,
        *,
        outbox: Store,
        topics: contract.Topics,
        uplink: Uplink,
        rules: RuleEngine,
        overrides: RuleOverrides,
        mute: Mute,
        config_path: Path | None,
        heartbeat_now: threading.Event,
    ) -> None:
        """``config_path`` is what a reload re-reads (None: the agent runs on defaults)."""
        self.runtime = runtime
        self.cameras = cameras
        self.status = status
        self.health = health
        self.writer = writer
        self.outbox = outbox
        self.topics = topics
        self.uplink = uplink
        self.rules = rules
        self.overrides = overrides
        self.mute = mute
        self.config_path = config_path
        self.heartbeat_now = heartbeat_now
        self._reload_lock = threading.Lock()

    # ------------------------------------------------------------------ reload

    def reload(self, source: str) -> dict[str, Any]:
        """Re-read the config file and apply what can change live.

        Rules (with the stored overrides on top), cameras (added, removed, changed ones
        restarted; a change to a camera's name, zones or rules only restarts nothing),
        evidence and heartbeat settings apply at once; a change anywhere else
        (mqtt, storage, model, identity, logging) is reported in ``restart_required`` and
        in the heartbeat, and the running agent keeps its old values there.

        Raises:
            ConfigError: no config file, or the file is not valid: nothing is changed.
        """
        if self.config_path is None:
            raise ConfigError("the agent runs on embedded defaults: there is no file to reload")
        runtime, cameras = self.runtime, self.cameras
        with self._reload_lock:
            new = load_config(self.config_path)
            problems = check_secrets(new)
            if problems:
                raise ConfigError(f"{self.config_path}: secrets cannot be read", problems)
            change = diff_config(runtime.config, new)
            runtime.restart_required = change.restart_required
            runtime.reloaded_at = time.time()
            runtime.config = apply_live(runtime.config, new)
            if {"rules", "cameras", "schedules"} & set(change.live):
                for event in self.rules.configure(
                    effective_rules(new.rules, self.overrides.load()),
                    cameras=new.cameras,
                    schedules=new.schedules,
                ):
                    self.writer.ended(event)
            enabled = {cid: cam for cid, cam in new.cameras.items() if cam.enabled}
            readers = cameras.readers
            gone = sorted(set(readers) - set(enabled))
            restarted = sorted(
                cid
                for cid in set(readers) & set(enabled)
                if reader_settings(readers[cid].config) != reader_settings(enabled[cid])
            )
            added = sorted(set(enabled) - set(readers))
            cameras.join(cameras.remove(gone + restarted), timeout=0.05)
            now = time.time()
            for cid in gone:
                try:
                    self.outbox.close_outage(cid, now)
                except StoreError as exc:
                    logger.error("camera %s: outage not closed: %s", cid, exc)
                self.status.clear(cid)
            cameras.start(
                cameras.add(
                    {cid: enabled[cid] for cid in added + restarted}, self.status.on_transition
                )
            )
            if "cameras" in change.live or "food" in change.restart_required:
                config = runtime.config
                runtime.food = FoodMonitor(config, self.outbox, config.storage.state_dir)
        result = {
            "source": source,
            "changed": change.live + change.restart_required,
            "applied": change.live,
            "restart_required": change.restart_required,
            "cameras_added": added,
            "cameras_removed": gone,
            "cameras_restarted": restarted,
        }
        logger.info(
            "config reloaded (%s): applied %s; needs a restart: %s; cameras +%s -%s ~%s",
            source,
            ",".join(change.live) or "nothing",
            ",".join(change.restart_required) or "nothing",
            ",".join(result["cameras_added"]) or "-",
            ",".join(result["cameras_removed"]) or "-",
            ",".join(result["cameras_restarted"]) or "-",
        )
        self.heartbeat_now.set()  # the platform sees the new state at once
        return result

    def reload_from_signal(self) -> None:
        """Reload for SIGHUP (on the main thread): a refused file is logged, never raised."""
        sd_notify("RELOADING=1")
        try:
            self.reload("SIGHUP")
        except ConfigError as exc:
            logger.error("reload refused, the running config stays: %s", exc)
            for problem in exc.problems:
                logger.error("  %s", problem)
        except Exception:  # the main loop's edge: a bug in reload must not stop the agent
            logger.exception("reload failed, the running config stays")
        sd_notify(f"READY=1\nSTATUS={self.health.status_line()}")

    # ------------------------------------------------------------------ commands

    def table(self) -> dict[str, Handler]:
        """Every command's handler, by command name."""
        return {
            "ping": lambda _args: {"pong": True, "agent_version": __version__},
            "heartbeat": self._cmd_heartbeat,
            "status": lambda _args: self.health.report(),
            "snapshot": self._cmd_snapshot,
            "resend": self._cmd_resend,
            "mute": self._cmd_mute,
            "set": self._cmd_set,
            "reload": self._cmd_reload,
        }

    def _cmd_heartbeat(self, _args: dict[str, Any]) -> dict[str, Any]:
        self.heartbeat_now.set()
        return {"scheduled": True}

    def _cmd_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """The camera's latest analysed frame as a JPEG (base64) in the reply."""
        camera_id = args.get("camera")
        readers = self.cameras.readers
        if not isinstance(camera_id, str) or camera_id not in readers:
            raise CommandError(f"unknown camera {camera_id!r} (known: {', '.join(readers)})")
        frame = self.cameras.last_frames.get(camera_id)
        if frame is None:
            raise CommandError(
                f"camera {camera_id} has no frame yet ({readers[camera_id].state.value})"
            )
        # Base64 grows the JPEG by a third: keep the reply under a 1 MB packet limit.
        config = self.runtime.config
        budget = config.evidence.model_copy(
            update={"max_bytes": min(config.evidence.max_bytes, 700_000)}
        )
        jpeg, width, height = evidence.encode_jpeg(frame.image, budget)
        return {
            "camera": camera_id,
            "taken_at": contract.utc_iso(frame.wall),
            "width": width,
            "height": height,
            "mime": "image/jpeg",
            "data_b64": base64.b64encode(jpeg).decode("ascii"),
        }

    def _cmd_resend(self, args: dict[str, Any]) -> dict[str, Any]:
        """Queue the stored alerts raised in [since, until] again (ISO-8601 or epoch seconds)."""
        since = parse_time(args.get("since"), "since")
        until = parse_time(args.get("until", time.time()), "until")
        count = self.outbox.requeue_alerts(since, until, self.topics.alert)
        self.uplink.wake()
        return {"requeued": count}

    def _cmd_mute(self, args: dict[str, Any]) -> dict[str, Any]:
        """Silence the on-site alarm for ``minutes`` (0 ends the mute); kept across restarts."""
        until = self.mute.set(args.get("minutes"), source="command:mute")
        self.heartbeat_now.set()
        return {"muted_until": contract.utc_iso(until) if until else None}

    def _cmd_set(self, args: dict[str, Any]) -> dict[str, Any]:
        """Change a rule's threshold, durations, cooldown, severity or enabled; persisted."""
        config = self.runtime.config
        name, rule, override = self.overrides.set(config.rules, args, config.schedules)
        for event in self.rules.configure(effective_rules(config.rules, self.overrides.load())):
            self.writer.ended(event)
        logger.info("rule %s changed by the platform: %s", name, override or "reset")
        self.heartbeat_now.set()
        return {
            "rule": name,
            "override": override,
            "effective": rule.model_dump(mode="json"),
        }

    def _cmd_reload(self, _args: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.reload("command")
        except ConfigError as exc:
            raise CommandError("; ".join([str(exc), *exc.problems])) from None


def parse_time(value: object, name: str) -> float:
    """Epoch seconds from a number or an ISO-8601 string.

    Raises:
        CommandError: neither.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise CommandError(f"'{name}' is not a plausible time: too large") from None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise CommandError(f"'{name}' must be epoch seconds or an ISO-8601 time, not {value!r}")
