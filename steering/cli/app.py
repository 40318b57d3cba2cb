"""The `steer` command's root: the typer apps, global options, exit codes and error handling."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console

from steering.client import (
    DEFAULT_URL,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    SteeringError,
    TooLarge,
    Unauthorized,
    WaitTimeout,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_NOT_READY, EXIT_AUTH = 0, 1, 2, 3, 4, 5
EPILOG = (
    "Exit codes: 0 ok; 1 server or other error (also: the server is unreachable, a task failed); "
    "2 usage error or a request the server refused as invalid; 3 task not found; "
    "4 task not ready, conflict (e.g. another model's vector) or a wait that timed out; "
    "5 API key missing or wrong."
)

app = typer.Typer(
    name="steer",
    help="Register few-shot tasks as steering vectors and generate with them.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would show the API key
    context_settings={"help_option_names": ["-h", "--help"]},
)
tasks_app = typer.Typer(help="Register, list, show and delete tasks.", epilog=EPILOG, no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class State:
    url: str = DEFAULT_URL
    api_key: str | None = None
    json: bool = False

    def client(self) -> Client:
        return Client(self.url, self.api_key or "")


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")]


@app.callback()
def _global(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="STEER_URL", help="The server's base URL.")] = DEFAULT_URL,
    api_key: Annotated[
        str | None, typer.Option(envvar="STEER_API_KEY", help="API key (sent as a Bearer token).", show_default=False)
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    ctx.obj = State(url=url, api_key=api_key, json=json_out)


def state_of(ctx: typer.Context, json_out: bool = False) -> State:
    state = ctx.find_object(State) or State()
    if json_out:
        state.json = True
    return state


# ------------------------------------------------------------------------------------------- errors


def exit_code(exc: BaseException) -> int:
    """The documented exit code for an error (see EPILOG)."""
    if isinstance(exc, (Unauthorized, Forbidden)):
        return EXIT_AUTH
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, (Conflict, WaitTimeout)):
        return EXIT_NOT_READY
    if isinstance(exc, (BadRequest, TooLarge, ValueError, FileNotFoundError)):
        return EXIT_USAGE
    return EXIT_ERROR


def _describe(exc: BaseException, state: State) -> dict[str, Any]:
    if isinstance(exc, httpx.HTTPError):
        return {"type": "connection_error", "message": f"cannot reach the server at {state.url}: {exc}"}
    kind = getattr(exc, "type", None) or type(exc).__name__
    return {"type": kind, "message": getattr(exc, "message", None) or str(exc)}


def handled(func: F) -> F:
    """Run a command, turning client and input errors into a message and a meaningful exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SteeringError, httpx.HTTPError, ValueError, FileNotFoundError) as exc:
            ctx = kwargs.get("ctx")
            state = state_of(ctx) if hasattr(ctx, "find_object") else State()
            error = _describe(exc, state)
            if state.json:
                err.print_json(json.dumps({"error": error}))
            else:
                err.print(f"[bold red]error[/]: {error['message']}", highlight=False, markup=True)
            raise typer.Exit(exit_code(exc)) from None

    return wrapper  # type: ignore[return-value]
