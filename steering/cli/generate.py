"""`steer generate`: zero-shot generation steered by tasks, printed whole or streamed."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from steering.cli.app import EPILOG, JsonFlag, State, app, err, handled, state_of
from steering.cli.render import emit_json, fmt
from steering.client import Client
from steering.wire.protocol import GenerateResponse, SteeringEntry


def parse_task(spec: str) -> SteeringEntry:
    """`TASK` or `TASK:STRENGTH`, TASK an id or a name (names hold no ':'; the strength may be negative)."""
    task, sep, strength = spec.rpartition(":")
    if sep and task:
        try:
            return SteeringEntry(task=task, strength=float(strength))
        except ValueError:
            pass
    return SteeringEntry(task=spec)


@app.command(epilog=EPILOG)
@handled
def generate(
    ctx: typer.Context,
    text: Annotated[str | None, typer.Argument(help="A raw prompt, sent as is.", show_default=False)] = None,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", "-t", help="A task (id or name), or TASK:STRENGTH, to steer with (repeatable)."),
    ] = None,
    input_text: Annotated[
        str | None,
        typer.Option("--input", "-i", help="An input, written out with the first task's query template."),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens to generate at most.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 means greedy.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="A stop string (repeatable).")] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they come.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Generate, steered by the given tasks: `--input TEXT` (templated) or a raw prompt TEXT."""
    state = state_of(ctx, json_out)
    if (text is None) == (input_text is None):
        raise typer.BadParameter("give either --input TEXT or a raw prompt TEXT (not both)")
    kwargs: dict[str, Any] = {
        "input": input_text,
        "steering": [parse_task(t) for t in task or []],
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "stop": stop or None,
    }
    with state.client() as client:
        if stream:
            _stream(client, state, text, kwargs)
        else:
            _print_response(state, client.generate(text, **kwargs))


def _stream(client: Client, state: State, prompt: str | None, kwargs: dict[str, Any]) -> None:
    done: list[GenerateResponse] = []
    for piece in client.stream_generate(prompt, on_done=done.append, **kwargs):
        if state.json:
            typer.echo(json.dumps({"event": "token", "text": piece}, ensure_ascii=False))
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if state.json:
        for response in done:
            typer.echo(json.dumps({"event": "done", **response.model_dump(mode="json")}, ensure_ascii=False))
        return
    sys.stdout.write("\n")
    for response in done:
        _print_summary(response)


def _print_response(state: State, response: GenerateResponse) -> None:
    if state.json:
        emit_json(response.model_dump(mode="json"))
        return
    typer.echo(response.text)
    _print_summary(response)


def _print_summary(response: GenerateResponse) -> None:
    steering = ", ".join(f"{e.task}@{fmt(e.strength)}" for e in response.steering) or "none"
    seconds = response.timing.get("request_s")
    took = f", {seconds:.2f} s" if seconds is not None else ""
    err.print(
        f"[dim]{response.usage.completion_tokens} tokens, {response.finish_reason}{took}; steering: {steering}[/]",
        highlight=False,
    )
