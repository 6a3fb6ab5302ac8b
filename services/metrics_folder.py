"""The folder of `ledger serve`'s metric files (prometheus_client's multiprocess mode): made,
and named in the environment its children inherit, before the first child is spawned. Light to
import: prometheus_client is loaded only once the API process is on its way."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Final

MULTIPROCESS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus_client's multiprocess mode keeps every process's metric files."""
METRICS_DIR: Final = "metrics"
"""The data dir's folder of metric files: one folder per `ledger serve` (by its pid)."""
SERVE_DIR_PREFIX: Final = "serve-"


def make_shared_folder(data_dir: Path) -> Path:
    """This serve's folder of metric files, made afresh (those of serves that are gone are
    removed), and named in this process's environment for the children it spawns from now on."""
    metrics_dir = data_dir / METRICS_DIR
    _remove_folders_of_gone_serves(metrics_dir)
    directory = metrics_dir / f"{SERVE_DIR_PREFIX}{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROCESS_DIR_ENV] = str(directory)  # spawned children inherit it
    return directory


def _remove_folders_of_gone_serves(metrics_dir: Path) -> None:
    for folder in metrics_dir.glob(f"{SERVE_DIR_PREFIX}*"):
        pid = folder.name.removeprefix(SERVE_DIR_PREFIX)
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this serve's folder is made afresh
    with contextlib.suppress(PermissionError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
    return True
