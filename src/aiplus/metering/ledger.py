"""The usage ledger: one event per request, recorded cheaply and durably, written to the database in batches."""

from __future__ import annotations

from aiplus.metering.events import UsageEvent, write_events

__all__ = ["UsageEvent", "write_events"]
