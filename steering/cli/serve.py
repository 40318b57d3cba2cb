"""`steer serve`: run the server with the environment's settings and these options."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from steering.cli.app import EPILOG, app


@app.command(epilog=EPILOG)
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (STEER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (STEER_PORT).")] = None,
    model: Annotated[str | None, typer.Option(help="Model: default, tiny:<family>, a hub id or a folder.")] = None,
) -> None:
    """Run the server (`python -m app`) with the settings from the environment and these options."""
    given = {"STEER_HOST": host, "STEER_PORT": None if port is None else str(port), "STEER_MODEL": model}
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **{k: v for k, v in given.items() if v is not None}}
    os.execvpe(sys.executable, [sys.executable, "-m", "app"], env)
