"""How often snapshots are saved and how many are kept: constants only, so the settings and the
command line can name them without loading the snapshot code."""

from __future__ import annotations

from typing import Final

SNAPSHOT_EVERY_RECORDS: Final = 100_000
"""Records after which the projector saves a snapshot (LEDGER_SNAPSHOT_EVERY_RECORDS)."""
SNAPSHOT_EVERY_SECONDS: Final = 600
"""Seconds after which it saves one if the log moved at all (LEDGER_SNAPSHOT_EVERY_SECONDS)."""
SNAPSHOTS_KEPT: Final = 3
"""Snapshots `prune` keeps by default, newest first."""
