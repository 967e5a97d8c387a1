"""The store as its users see it: :class:`Store` to read and write, :class:`StoreView` to read.

Each concern keeps its own module (``outbox``, ``alerts``, ``state``) with a reading and a
writing half; the two classes here compose them over a connection from ``database``.
"""

from __future__ import annotations

from pathlib import Path

from agent.store.alerts import AlertReads, AlertWrites
from agent.store.database import READ_BUSY_TIMEOUT, ReadOnlyDatabase
from agent.store.outbox import OutboxReads
from agent.store.state import StateReads, StateWrites


class Store(AlertWrites, StateWrites):
    """Thread-safe store for alerts and outgoing messages, backed by one SQLite file."""

    def __init__(self, path: Path, *, ttl: float = 7 * 86400.0) -> None:
        """Open (creating, migrating or recovering) the database at ``path``.

        Raises:
            StoreBusyError: another process held a lock past the wait (nothing is moved).
            StoreError: the directory cannot be created or the file cannot be opened.
        """
        super().__init__(path, ttl=ttl)
        if self.recovered_from is not None:
            self.bump("db_recovered")


class StoreView(AlertReads, OutboxReads, StateReads, ReadOnlyDatabase):
    """A read-only view of the agent's database for the CLI, ``status`` and ``check``.

    Opening it never creates, migrates or moves the file and never takes a write lock, so
    it neither blocks nor changes a running agent; a lock that blocks readers for longer
    than ``busy_timeout`` seconds raises :class:`~agent.errors.StoreBusyError`.
    """

    def __init__(self, path: Path, *, busy_timeout: float = READ_BUSY_TIMEOUT) -> None:
        """Open the existing database at ``path`` read-only.

        Raises:
            StoreBusyError: a lock blocked reading past ``busy_timeout`` seconds.
            StoreError: there is no database at ``path`` (none is created), or SQLite
                cannot read it.
        """
        super().__init__(path, busy_timeout=busy_timeout)
