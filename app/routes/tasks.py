"""POST/GET/PATCH/DELETE /v1/tasks: register demonstrations, watch the computation, rename or remove a task.

A task is named in the path by its id or by its name (names are unique per key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from app.services import Services, owner, services
from app.tasks import task_info
from steering.wire.protocol import TaskCreate, TaskCreated, TaskInfo, TaskList, TaskUpdate

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
MAX_PAGE = 200
TaskRef = Annotated[str, Path(max_length=200, description="The task's id, or its name within the caller's key.")]


@router.post("", response_model=TaskCreated, status_code=202, responses={200: {"model": TaskCreated}})
async def create_task(
    body: TaskCreate, response: Response, svc: Services = Depends(services), who: str | None = Depends(owner)
) -> TaskCreated:
    """Register a task (202), or find the same one (200 when ready). Posting it again under another `name`
    renames it; a name another task of this key holds answers 409 `name_taken`, unless `take_name`."""
    record, _ = await svc.tasks.register(body, who)
    if record.status == "ready":
        response.status_code = 200
    response.headers["Location"] = f"/v1/tasks/{record.id}"
    return TaskCreated(id=record.id, status=record.status, name=record.name)


@router.get("", response_model=TaskList)
async def list_tasks(
    offset: int = Query(0, ge=0, le=1_000_000),
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    include_demonstrations: bool = Query(False, description="Include each task's demonstrations (large)."),
    svc: Services = Depends(services),
    who: str | None = Depends(owner),
) -> TaskList:
    """The caller's tasks, newest first, one page at a time (`next_offset` is null on the last page)."""
    records, total = await svc.tasks.list(who, offset, limit)
    more = offset + len(records) < total
    return TaskList(
        tasks=[task_info(r, include_demonstrations) for r in records],
        total=total,
        next_offset=offset + len(records) if more and records else None,
    )


@router.get("/{task_id}", response_model=TaskInfo)
async def get_task(task_id: TaskRef, svc: Services = Depends(services), who: str | None = Depends(owner)) -> TaskInfo:
    record = await svc.tasks.get(task_id, who)
    if record.status in ("pending", "running"):
        svc.worker.submit(record.id)  # adopt a task whose computing replica died
    return task_info(record)


@router.patch("/{task_id}", response_model=TaskInfo)
async def update_task(
    body: TaskUpdate, task_id: TaskRef, svc: Services = Depends(services), who: str | None = Depends(owner)
) -> TaskInfo:
    """Rename the task (`name: null` removes its name). A name another task of this key holds answers 409
    `name_taken`, unless `take_name`: then the name moves here and that task stays, unnamed."""
    return task_info(await svc.tasks.rename(task_id, who, body.name, body.take_name))


@router.delete("/{task_id}", status_code=204)
async def delete_task(
    task_id: TaskRef, svc: Services = Depends(services), who: str | None = Depends(owner)
) -> Response:
    """Delete the task, its vector and its name (free for another task at once)."""
    await svc.tasks.delete(task_id, who)
    return Response(status_code=204)
