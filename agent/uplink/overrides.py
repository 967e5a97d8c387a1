"""Run-time control from the platform: rule overrides (``set``), the alarm mute (``mute``),
and what a config reload (``reload``, SIGHUP) may change while the agent runs.

Overrides and the mute are kept in the database's ``settings`` table, so they outlive a
restart; an override applies on top of the config file's rule (also after a reload) until
it is reset. Only rule fields that are safe to change live are settable: which labels a
rule counts is the model's business and stays in the config file.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agent.config import AgentConfig, RuleConfig, describe_validation
from agent.store.store import Store
from agent.uplink.commands import CommandError

logger = logging.getLogger(__name__)

RULE_PREFIX = "rule."
MUTE_KEY = "alarm.muted_until"
#: Rule fields the ``set`` command may change.
SETTABLE = (
    "enabled",
    "min_confidence",
    "min_duration",
    "end_after",
    "consensus",
    "cooldown",
    "severity",
    "schedule",
)
MAX_MUTE_MINUTES = 24 * 60
#: Config sections a reload applies live; any other changed section needs a restart.
LIVE_SECTIONS = ("cameras", "rules", "schedules", "evidence", "heartbeat")


def merge_rule(name: str, base: RuleConfig, changes: Mapping[str, Any]) -> RuleConfig:
    """``base`` with ``changes`` applied and validated like the config file.

    Raises:
        CommandError: a field that is not settable, or a value the config would reject.
    """
    unknown = sorted(set(changes) - set(SETTABLE))
    if unknown:
        raise CommandError(
            f"rule {name}: cannot set {', '.join(unknown)} (settable: {', '.join(SETTABLE)})"
        )
    try:
        return RuleConfig.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        raise CommandError("; ".join(describe_validation(exc, f"rules.{name}"))) from None


def effective_rules(
    configured: Mapping[str, RuleConfig], overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, RuleConfig]:
    """The config's rules with the stored overrides applied.

    An override for a rule the config no longer has, or one that no longer validates, is
    skipped with a warning (and kept, so it applies again if the rule comes back).
    """
    rules = dict(configured)
    for name, changes in overrides.items():
        if name not in rules:
            logger.warning("stored override for rule %s ignored: no such rule in the config", name)
            continue
        try:
            rules[name] = merge_rule(name, rules[name], changes)
        except CommandError as exc:
            logger.warning("stored override for rule %s ignored: %s", name, exc)
    return rules


class RuleOverrides:
    """The ``set`` command's persistent rule changes."""

    def __init__(self, outbox: Store) -> None:
        self.outbox = outbox

    def load(self) -> dict[str, dict[str, Any]]:
        """Stored overrides by rule name."""
        return {
            key[len(RULE_PREFIX) :]: value
            for key, value in self.outbox.settings(RULE_PREFIX).items()
            if isinstance(value, dict)
        }

    def set(
        self,
        configured: Mapping[str, RuleConfig],
        args: Mapping[str, Any],
        schedules: Mapping[str, object] | None = None,
    ) -> tuple[str, RuleConfig, dict[str, Any]]:
        """Validate and store ``set`` arguments; return (rule, effective rule, its override).

        ``args`` is ``{"rule": NAME, FIELD: VALUE, ...}`` or ``{"rule": NAME, "reset": true}``
        (drop the override: the config file's values apply again).

        Raises:
            CommandError: unknown rule, nothing to set, or an invalid field or value.
            StoreError: the override cannot be stored.
        """
        name = args.get("rule")
        if not isinstance(name, str) or name not in configured:
            known = ", ".join(sorted(configured))
            raise CommandError(f"'rule' must name a configured rule ({known}), not {name!r}")
        changes = {k: v for k, v in args.items() if k not in ("rule", "reset")}
        reset = args.get("reset", False)
        if not isinstance(reset, bool):
            raise CommandError(f"'reset' must be true or false, not {reset!r}")
        if reset:
            if changes:
                raise CommandError("'reset' cannot be combined with fields to set")
            self.outbox.delete_setting(RULE_PREFIX + name)
            return name, configured[name], {}
        if not changes:
            raise CommandError(f"nothing to set: give one of {', '.join(SETTABLE)}, or reset")
        override = {**self.load().get(name, {}), **changes}
        rule = merge_rule(name, configured[name], override)
        if rule.schedule is not None and rule.schedule not in (schedules or {}):
            known = ", ".join(sorted(schedules or {})) or "none defined"
            raise CommandError(
                f"rules.{name}.schedule: unknown schedule {rule.schedule!r} ({known})"
            )
        # Store the validated values (durations as seconds), not the raw strings.
        stored = {key: getattr(rule, key) for key in override}
        self.outbox.put_setting(RULE_PREFIX + name, stored, source="command:set")
        return name, rule, stored


class Mute:
    """Silence of the on-site alarm until a wall-clock time, kept across restarts."""

    def __init__(self, outbox: Store) -> None:
        self.outbox = outbox
        self._until = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Re-read the stored mute (one small SELECT), e.g. set by ``mclz-agent alarm mute``.

        Raises:
            StoreError: the database cannot be read.
        """
        stored = self.outbox.settings(MUTE_KEY).get(MUTE_KEY)
        self._until = float(stored) if isinstance(stored, int | float) else 0.0

    @property
    def until(self) -> float | None:
        """Wall time the mute ends, or None when not muted now."""
        return self._until if self._until > time.time() else None

    def muted(self, now: float | None = None) -> bool:
        """Whether the alarm is silenced at ``now``."""
        return (time.time() if now is None else now) < self._until

    def set(self, minutes: object, source: str) -> float | None:
        """Mute for ``minutes`` (0 ends the mute); return when it ends.

        Raises:
            CommandError: ``minutes`` is not a number in 0..1440.
            StoreError: the mute cannot be stored.
        """
        if (
            not isinstance(minutes, int | float)
            or isinstance(minutes, bool)
            or not 0 <= minutes <= MAX_MUTE_MINUTES  # before isfinite: 10**309 overflows it
            or not math.isfinite(minutes)
        ):
            raise CommandError(
                f"'minutes' must be a number from 0 to {MAX_MUTE_MINUTES}, not {minutes!r}"
            )
        until = time.time() + 60.0 * minutes if minutes > 0 else 0.0
        self.outbox.put_setting(MUTE_KEY, until, source=source)
        self._until = until
        logger.info(
            "on-site alarm %s by %s",
            f"muted for {minutes:g} min" if until else "unmuted",
            source,
        )
        return self.until


@dataclass(slots=True)
class ConfigChange:
    """What differs between the running config and a freshly read one."""

    cameras_added: list[str] = field(default_factory=list)
    cameras_removed: list[str] = field(default_factory=list)
    cameras_changed: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # changed sections applied live
    restart_required: list[str] = field(default_factory=list)  # changed, not applied

    @property
    def empty(self) -> bool:
        """Whether nothing changed."""
        return not (self.live or self.restart_required)


def diff_config(old: AgentConfig, new: AgentConfig) -> ConfigChange:
    """Compare two configs section by section."""
    change = ConfigChange()
    for section in type(old).model_fields:
        if getattr(old, section) == getattr(new, section):
            continue
        (change.live if section in LIVE_SECTIONS else change.restart_required).append(section)
    change.cameras_added = sorted(set(new.cameras) - set(old.cameras))
    change.cameras_removed = sorted(set(old.cameras) - set(new.cameras))
    change.cameras_changed = sorted(
        cid for cid in set(old.cameras) & set(new.cameras) if old.cameras[cid] != new.cameras[cid]
    )
    return change


def apply_live(old: AgentConfig, new: AgentConfig) -> AgentConfig:
    """The running config with the live sections of ``new``; the rest waits for a restart."""
    return old.model_copy(update={section: getattr(new, section) for section in LIVE_SECTIONS})
