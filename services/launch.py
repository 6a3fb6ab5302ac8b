"""`ledger serve`'s first moments: hold the data dir, share the metrics folder and spawn the
HTTP API process, before this process imports the rest of the service. The API process's
start-up is the path to ready; the imports of `services.serve` (most of a second of CPU) run
beside it instead of before it."""

from __future__ import annotations

from contextlib import ExitStack

from services.api_supervisor import ApiSupervisor
from services.config import Settings
from services.metrics_folder import make_shared_folder
from services.running import hold_data_dir


def launch(settings: Settings) -> None:
    """Run `ledger serve` until SIGTERM or SIGINT."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        if settings.role == "all":  # the one process of its data dir
            held.enter_context(hold_data_dir(settings.data_dir))
        make_shared_folder(settings.data_dir)  # before any child: they inherit the folder
        api: ApiSupervisor | None = None
        if settings.role != "ingest":
            api = ApiSupervisor(settings)
            held.callback(api.stop)
            api.spawn()  # its interpreter starts on the other core while this one goes on
        from services.serve import serve

        serve(settings, api)
