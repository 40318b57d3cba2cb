"""Vector files over HTTP; the work is `app.vector_files.VectorFiles`.

- `GET /v1/tasks/{id}/vector?format=safetensors` answers the stored bytes as they are (any method);
  `format=gguf` writes a llama.cpp / repeng control vector (residual additive modes only: 422 otherwise).
- `POST /v1/tasks/import?format=gguf|safetensors&name=...` takes the file as the raw body and creates a
  ready task (201, or 200 when the same file was imported already).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response

from app.services import owner
from app.tasks import task_info
from app.vector_files import VectorFiles, VectorFormat, vector_files
from steering.wire.protocol import TaskInfo, TaskName

router = APIRouter(prefix="/v1/tasks", tags=["vectors"])

MEDIA_TYPES = {"safetensors": "application/octet-stream", "gguf": "application/octet-stream"}
IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The vector file as the raw body: a GGUF control vector or a safetensors steering vector.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.get(
    "/{task_id}/vector", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}}
)
async def export_vector(
    task_id: str,
    format: VectorFormat = Query("safetensors", description="safetensors (any method) or gguf (additive only)."),
    drop_layer_zero: bool = Query(False, description="GGUF: leave out layer 0, which llama.cpp cannot steer."),
    files: VectorFiles = Depends(vector_files),
    who: str | None = Depends(owner),
) -> Response:
    data, filename = await files.export(task_id, format, drop_layer_zero, who)
    return Response(
        content=data,
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.post(
    "/import",
    response_model=TaskInfo,
    status_code=201,
    responses={200: {"model": TaskInfo}},
    openapi_extra=IMPORT_BODY,
)
async def import_vector(
    request: Request,
    response: Response,
    format: VectorFormat | None = Query(None, description="gguf or safetensors; guessed from the bytes if unset."),
    name: TaskName | None = Query(None, description="A name for the task, unique within the key (409 when taken)."),
    files: VectorFiles = Depends(vector_files),
    who: str | None = Depends(owner),
) -> TaskInfo:
    record, created = await files.import_(request.body, format, name, who)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/tasks/{record.id}"
    return task_info(record)
