"""Specific exceptions raised inside the agent; only the CLI turns them into exit codes."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or invalid.

    ``problems`` lists every problem found, each already formatted as
    ``file:line path: message`` so the CLI can print them one per line.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems or [message]


class SecretError(ConfigError):
    """A secret named in the config cannot be resolved (missing variable or credential file)."""


class StreamError(AgentError):
    """A camera stream cannot be opened or read."""


class ModelError(AgentError):
    """A model package is missing, corrupt, or does not match its manifest."""


class DatasetError(AgentError):
    """A labelled dataset folder is missing, has an unknown layout or class, or no usable sample."""


class StoreError(AgentError):
    """Local storage cannot be used: the SQLite store, or files kept under the state directory.

    Besides the database: evidence images, captured frames, food references, and the
    files the installer writes.
    """


class StoreBusyError(StoreError):
    """Another process held a lock on the database for longer than the caller would wait.

    Not damage: the file is fine and is never moved aside for it; try again.
    """


class UplinkError(AgentError):
    """The MQTT uplink is misconfigured (bad URL, unreadable TLS material)."""


class SounderError(AgentError):
    """The on-site alarm's sounder could not play a sound (device, speaker or program failed)."""


class DiscoveryError(AgentError):
    """ONVIF discovery cannot use the network (bad interface, no multicast route, no permission)."""


class PasswordHashError(SecretError):
    """The stored password hash of the installer page is not one ``web passwd`` writes."""


class WebError(AgentError):
    """The local installer page cannot be served (address in use or not on this box, TLS files)."""
