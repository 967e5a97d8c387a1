"""The store stage: the agent's SQLite database (write first, send second).

``database`` opens the file (its path, migrations, recovery, the read-only opener);
``outbox``, ``alerts`` and ``state`` hold the queries of each concern; ``store`` composes
them into :class:`~agent.store.store.Store` (read-write) and
:class:`~agent.store.store.StoreView` (read-only). Nothing is imported here, so importing
one module does not load the others.
"""
