"""`steer export` and `steer import`: a task's vector as a file, and a file as a ready task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from steering.cli.app import EPILOG, JsonFlag, app, err, handled, state_of
from steering.cli.render import emit_json, show_task


@app.command("export", epilog=EPILOG)
@handled
def export(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="The task's id or name.")],
    format: Annotated[
        str | None, typer.Option("--format", "-f", help="safetensors or gguf (default: from -o's suffix).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The file to write (default: ID.FORMAT).")
    ] = None,
    drop_layer_zero: Annotated[bool, typer.Option(help="GGUF: leave out layer 0 (llama.cpp cannot steer it).")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Download a task's vector as safetensors (any method) or a GGUF control vector (llama.cpp, repeng)."""
    state = state_of(ctx, json_out)
    fmt = format or (output.suffix.lstrip(".").lower() if output is not None else "") or "safetensors"
    if fmt not in ("safetensors", "gguf"):
        raise typer.BadParameter("choose safetensors or gguf", param_hint="--format")
    path = output or Path(f"{task_id}.{fmt}")
    with state.client() as client:
        data = client.export_vector(task_id, fmt, drop_layer_zero=drop_layer_zero)  # type: ignore[arg-type]
    path.write_bytes(data)
    if state.json:
        emit_json({"id": task_id, "format": fmt, "path": str(path), "bytes": len(data)})
    else:
        err.print(f"wrote {len(data)} bytes ({fmt}) to {path}")


@app.command("import", epilog=EPILOG)
@handled
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A .safetensors vector (from `steer export`) or a GGUF control vector.")],
    name: Annotated[str | None, typer.Option(help="A name for the new task.")] = None,
    format: Annotated[
        str | None, typer.Option("--format", "-f", help="safetensors or gguf (default: from the suffix or the bytes).")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a ready task from a vector file."""
    state = state_of(ctx, json_out)
    if format not in (None, "safetensors", "gguf"):
        raise typer.BadParameter("choose safetensors or gguf", param_hint="--format")
    with state.client() as client:
        info = client.import_vector(file, format=format, name=name)  # type: ignore[arg-type]
    show_task(state, info)
