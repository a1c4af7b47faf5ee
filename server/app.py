"""Pollen's Flower ServerApp for devices (``serverapp = "server.app:app"`` in an App's
``[tool.flwr.app.components]``): its run config holds only the settings devices and the server use
(:class:`server.RunSettings`), and a simulation-only key (``partition``, ``attack``...) is refused
naming it. A simulated App registers ``simulations.app:serverapp`` instead, built here with the
simulation's wider settings class.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.config import RunSettings
from server.federation import RoundCallback, ServerHooks, default_out_dir, run_federation


def build_server_app(
    settings: RunSettings | None = None,
    *,
    out_dir: Path | None = None,
    on_round: RoundCallback | None = None,
    wrap_grid: Callable[[Grid], Grid] | None = None,
    hooks: ServerHooks | None = None,
    schema: type[RunSettings] = RunSettings,
) -> ServerApp:
    """A ServerApp with fixed settings (simulations), or one reading the run config (``None``).

    ``wrap_grid`` lets a simulation put a view in front of the Grid the runtime hands over
    (e.g. a virtual clock for device heterogeneity). ``schema``: the settings class the run
    config is read into (its unknown keys refused).
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_settings = settings or schema.from_run_config(context.run_config)
        target = out_dir or (
            Path(run_settings.out_dir) if run_settings.out_dir else default_out_dir(context.run_id)
        )
        if wrap_grid is not None:
            grid = wrap_grid(grid)
        run_federation(grid, run_settings, out_dir=target, on_round=on_round, hooks=hooks)

    return server_app


app = build_server_app()
