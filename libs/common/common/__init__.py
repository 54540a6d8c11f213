"""MammothBox shared library: settings, logging, database, bus, storage, outbox, telemetry."""
