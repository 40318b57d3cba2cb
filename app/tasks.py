"""Registering, reading and deleting tasks, and turning steering entries into vectors to inject."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from app.bounds import Bounds
from app.error_codes import ApiError, ApiErrors
from app.errors import quoted
from app.metrics import Metrics
from app.settings import Settings
from app.store import NameTaken, StoreUnavailable, TaskRecord, TaskStore
from app.tokenizing import PromptTokenizer
from app.vector_cache import VectorCache
from app.worker import VectorWorker
from steering.methods import options_model
from steering.methods.prompt_length import longest_prompt_tokens
from steering.methods.registry import most_shots
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.steer.prefix import PrefixError, carries_prefix
from steering.steer.prefix_compose import PrefixComposer
from steering.tasks.templates import DEFAULT_TEMPLATE, NoChatTemplate, chat_template
from steering.tasks.verdict import verdict
from steering.vectors.task_vector import TaskVector, check_for_model
from steering.wire.protocol import TASK_ID_PREFIX, SteeringEntry, TaskCreate, TaskInfo, Template

log = logging.getLogger(__name__)


def _options_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        return f"options.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return f"options: {exc}"


def name_taken(exc: NameTaken) -> ApiError:
    return ApiErrors.NAME_TAKEN(name=quoted(exc.name), task=exc.holder)


def task_id_for(owner: str | None, fingerprint: str, body: TaskCreate, options: dict) -> str:
    """A content hash: the same task posted again (by the same owner, on the same model) has the same id."""
    payload = {
        "owner": owner,
        "fingerprint": fingerprint,
        "method": body.method,
        "options": options,
        "template": (body.template if isinstance(body.template, Template) else DEFAULT_TEMPLATE).model_dump(),
        "demonstrations": [d.model_dump() for d in body.demonstrations],
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return "task-" + digest[:24]


def task_info(record: TaskRecord, include_demonstrations: bool = True) -> TaskInfo:
    summary = record.summary or {}
    return TaskInfo(
        id=record.id,
        status=record.status,
        method=summary.get("method", record.method),
        name=record.name,
        num_demonstrations=len(record.spec.get("demonstrations", [])) or summary.get("num_demonstrations", 0),
        demonstrations=record.spec.get("demonstrations") if include_demonstrations else None,
        layers=summary.get("layers"),
        default_strength=summary.get("default_strength"),
        template=record.spec.get("template"),
        options=record.spec.get("options", {}),
        metrics=summary.get("metrics"),
        verdict=verdict(summary.get("method", record.method), summary.get("metrics")),
        answer_end=summary.get("answer_end"),
        progress=record.progress,
        error=record.error,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


class TaskService:
    def __init__(
        self,
        lm: LoadedModel,
        store: TaskStore,
        worker: VectorWorker,
        vectors: VectorCache,
        settings: Settings,
        metrics: Metrics,
        bounds: Bounds,
    ) -> None:
        self.lm, self.store, self.worker, self.vectors = lm, store, worker, vectors
        self.settings, self.metrics, self.bounds = settings, metrics, bounds
        self._tokenizing = PromptTokenizer(lm.tokenizer, threads=1)  # registrations' prompt-length checks
        self._prefixes = PrefixComposer(lm)

    def _check_limits(self, body: TaskCreate) -> dict:
        limit = self.settings.max_demonstrations
        if len(body.demonstrations) > limit:
            raise ApiErrors.TOO_MANY_DEMONSTRATIONS(limit=limit)
        longest = max(max(len(d.input), len(d.output)) for d in body.demonstrations)
        if longest > self.settings.max_demonstration_chars:
            raise ApiErrors.DEMONSTRATION_TOO_LONG(chars=longest, limit=self.settings.max_demonstration_chars)
        try:
            model = options_model(body.method)
        except (ImportError, ValueError):
            raise ApiErrors.UNKNOWN_METHOD(method=quoted(body.method)) from None
        try:
            options = model(**body.options).model_dump()
        except (ValidationError, TypeError) as exc:
            raise ApiErrors.INVALID_OPTIONS(reason=_options_message(exc)) from None
        self._check_options(options)
        return options

    def _check_prompts_fit(self, tokenizer: Any, body: TaskCreate, options: dict) -> None:
        """A task whose few-shot prompts would not fit the model's context is refused before it is stored."""
        window = self.lm.context_window
        if window is None:
            return
        template = body.template if isinstance(body.template, Template) else DEFAULT_TEMPLATE
        shots = most_shots(body.method, options, len(body.demonstrations))
        tokens = longest_prompt_tokens(tokenizer, template, body.demonstrations, shots)
        if tokens > window:
            raise ApiErrors.DEMONSTRATIONS_EXCEED_CONTEXT(shots=shots, tokens=tokens, window=window)

    def _check_options(self, options: dict, where: str = "options") -> None:
        """Layers and strengths fixed in the options (at any depth, e.g. auto's per-method options) obey the
        same bounds as a request's."""
        for key, value in options.items():
            if isinstance(value, dict):
                self._check_options(value, f"{where}.{key}")
            elif value is None:
                continue
            elif key in ("layer", "layers", "strength", "strengths"):
                self._check_option(key, value if isinstance(value, list) else [value], f"{where}.{key}")

    def _check_option(self, key: str, values: list, where: str) -> None:
        """The request's bound on an option's layers or strengths, failing as `invalid_options`."""
        try:
            if key.startswith("layer"):
                self.bounds.layers(values, where)
            else:
                for strength in values:
                    self.bounds.strength(strength, where)
        except ApiError as exc:
            raise ApiErrors.INVALID_OPTIONS(reason=exc.message) from None

    async def check_task_quota(self, owner: str | None) -> None:
        """How many tasks one key may keep (registered or imported)."""
        if await self.store.count(owner) >= self.settings.max_tasks_per_key:
            raise ApiErrors.TASK_QUOTA_EXCEEDED(limit=self.settings.max_tasks_per_key)

    async def _check_quotas(self, owner: str | None) -> None:
        """Per key: how many tasks it may keep, and how many may compute at once (across replicas)."""
        await self.check_task_quota(owner)
        records = await asyncio.gather(*(self.store.get(i) for i in await self.store.unfinished()))
        computing = sum(1 for r in records if r is not None and r.owner == owner)
        if computing >= self.settings.max_computations_per_key:
            raise ApiErrors.COMPUTATION_QUOTA_EXCEEDED(
                computing=computing, limit=self.settings.max_computations_per_key
            )

    async def register(self, body: TaskCreate, owner: str | None) -> tuple[TaskRecord, bool]:
        """Create the task (or find it) and make sure its vectors are being computed. Returns (record, created)."""
        body = self._expand_template(body)
        options = self._check_limits(body)
        task_id = task_id_for(owner, self.lm.fingerprint, body, options)
        for _ in range(3):  # a concurrent delete between create and get: try again, a bounded number of times
            existing = await self.store.get(task_id)
            if existing is None:
                await self._check_quotas(owner)
                await self._tokenizing.run(lambda tokenizer: self._check_prompts_fit(tokenizer, body, options))
                record = self._new_record(task_id, body, options, owner)
                if await self.create(record, take_name=body.take_name):
                    self.worker.submit(task_id)
                    return record, True
                existing = await self.store.get(task_id)
            if existing is not None:
                existing = await self.name_again(existing, body.name, body.take_name)
                if existing.status == "failed":  # posting a failed task again retries it
                    existing = (
                        await self.store.update(task_id, status="pending", error=None, progress=None, orphaned=0)
                        or existing
                    )
                if existing.status != "ready":
                    self.worker.submit(task_id)
                return existing, False
        raise ApiErrors.CONFLICT(task_id=task_id)

    def _expand_template(self, body: TaskCreate) -> TaskCreate:
        """`template: "chat"` becomes this model's chat template (steering.tasks.templates.chat_template)."""
        if body.template != "chat":
            return body
        try:
            return body.model_copy(update={"template": chat_template(self.lm.tokenizer)})
        except NoChatTemplate as exc:
            raise ApiErrors.NO_CHAT_TEMPLATE_FOR_TASK(reason=exc) from None

    def _new_record(self, task_id: str, body: TaskCreate, options: dict, owner: str | None) -> TaskRecord:
        now = time.time()
        return TaskRecord(
            id=task_id,
            owner=owner,
            name=body.name,
            method=body.method,
            spec={
                "demonstrations": [d.model_dump() for d in body.demonstrations],
                "template": (body.template if isinstance(body.template, Template) else DEFAULT_TEMPLATE).model_dump(),
                "options": options,
            },
            fingerprint=self.lm.fingerprint,
            created_at=now,
            updated_at=now,
        )

    async def create(self, record: TaskRecord, vector: bytes | None = None, *, take_name: bool = False) -> bool:
        """Store a new task with its name (False: the id exists). 409 `name_taken` when another task of the key
        holds the name, unless `take_name`: then the task is stored unnamed and takes the name right after."""
        try:
            return await self.store.create(record, vector)
        except NameTaken as exc:
            if not take_name or record.name is None:
                raise name_taken(exc) from None
        if not await self.store.create(record.model_copy(update={"name": None}), vector):
            return False
        await self.store.take_name(record.id, record.name)
        return True

    async def name_again(self, record: TaskRecord, name: str | None, take_name: bool) -> TaskRecord:
        """A task posted (or imported) again under another name takes that name; no name keeps its own."""
        if name is None or name == record.name:
            return record
        return await self._rename(record, name, take_name)

    async def rename(self, ref: str, owner: str | None, name: str | None, take_name: bool) -> TaskRecord:
        """Give the task `name` (None: no name). 409 `name_taken` when another task of the key holds it,
        unless `take_name`: then that task loses it in the same step."""
        return await self._rename(await self.get(ref, owner), name, take_name)

    async def _rename(self, record: TaskRecord, name: str | None, take_name: bool) -> TaskRecord:
        try:
            if take_name and name is not None:
                renamed = await self.store.take_name(record.id, name)
            else:
                renamed = await self.store.update(record.id, name=name)
        except NameTaken as exc:
            raise name_taken(exc) from None
        if renamed is None:
            raise ApiErrors.TASK_NOT_FOUND(task=repr(record.id))
        cached = self.vectors.get(record.id)
        if cached is not None:
            self.vectors.put(renamed, cached.vector)
        return renamed

    async def task_id(self, ref: str, owner: str | None) -> str:
        """The id of the owner's task that `ref` names: an id as it is, else one of the owner's names (404)."""
        if ref.startswith(TASK_ID_PREFIX):
            return ref
        found = await self.store.find_name(owner, ref)
        if found is None:
            raise ApiErrors.TASK_NOT_FOUND(task=quoted(ref))
        return found

    async def get(self, ref: str, owner: str | None) -> TaskRecord:
        """The owner's task that `ref` (an id or a name) names."""
        record = await self.store.get(await self.task_id(ref, owner))
        if record is None or record.owner != owner:
            raise ApiErrors.TASK_NOT_FOUND(task=quoted(ref))
        return record

    async def list(self, owner: str | None, offset: int, limit: int) -> tuple[list[TaskRecord], int]:
        """One page of the owner's tasks, newest first, and how many the owner has in all."""
        return await self.store.list(owner=owner, offset=offset, limit=limit), await self.store.count(owner)

    async def delete(self, ref: str, owner: str | None) -> None:
        task_id = (await self.get(ref, owner)).id
        self.worker.cancel(task_id)
        self.vectors.drop(task_id)
        await self.store.delete(task_id)

    async def ready_vector(self, ref: str, owner: str | None) -> tuple[TaskRecord, TaskVector]:
        """A ready task's record and vector (`ref`: its id or name). While the store is unreachable, what this
        replica holds serves."""
        try:
            task_id = await self.task_id(ref, owner)
        except StoreUnavailable:
            named = self.vectors.named(owner, ref)
            if named is None:
                raise
            task_id = named.record.id
        cached = self.vectors.get(task_id)
        try:
            record = await self.store.get(task_id)
        except StoreUnavailable:
            if cached is None:
                raise
            record = cached.record
        if record is None or record.owner != owner:
            raise ApiErrors.TASK_NOT_FOUND(task=quoted(task_id))
        if record.fingerprint != self.lm.fingerprint:
            raise ApiErrors.TASK_MODEL_MISMATCH(
                task_id=record.id, task_model=record.fingerprint, served=self.lm.fingerprint
            )
        if record.status != "ready":
            raise ApiErrors.TASK_NOT_READY(task_id=record.id, status=record.status)
        self.metrics.vector_cache.labels("hit" if cached is not None else "miss").inc()
        if cached is not None:
            return record, cached.vector
        data = await self.store.get_vector(task_id)
        try:
            vector = None if data is None else await asyncio.to_thread(self._read_stored, data)
        except ValueError as exc:  # VectorImportError, or anything else a damaged vector raises
            log.warning("the stored vector of %s is refused: %s", task_id, exc)
            raise await self._heal(record, f"its stored vector is refused ({exc})") from None
        if vector is None or vector.fingerprint != self.lm.fingerprint:
            raise await self._heal(record, "its vector was lost")
        self.vectors.put(record, vector)
        return record, vector

    def _read_stored(self, data: bytes) -> TaskVector:
        """A stored vector, held to an import's checks (metadata bounds, shapes, norms): a record written by an
        older version, or straight into the store, gets no further than an uploaded file would."""
        vector = TaskVector.from_bytes(data)
        if vector.fingerprint == self.lm.fingerprint:
            check_for_model(vector, self.lm.arch, self.bounds.scale)
        return vector

    async def _heal(self, record: TaskRecord, problem: str) -> ApiError:
        """A ready record whose vector is missing or refused: compute it again, or fail an import."""
        if record.spec.get("demonstrations"):
            log.warning("task %s is ready but %s: computing it again", record.id, problem)
            await self.store.update(record.id, status="pending", summary=None, error=None, orphaned=0)
            self.worker.submit(record.id)
            return ApiErrors.VECTOR_RECOMPUTING(task_id=record.id, problem=problem)
        await self.store.update(record.id, status="failed", error=f"{problem}: import the file again")
        return ApiErrors.VECTOR_TO_IMPORT_AGAIN(task_id=record.id, problem=problem)

    async def steering_terms(self, entries: Sequence[SteeringEntry], owner: str | None) -> list[SteeringTerm]:
        """Resolve entries into terms; every strength that will be applied (given or default) is bounded here."""
        if len(entries) > self.settings.max_steering_entries:
            raise ApiErrors.TOO_MANY_STEERING_ENTRIES(limit=self.settings.max_steering_entries)
        bounds = self.bounds
        for i, entry in enumerate(entries):
            if entry.strength is not None:
                bounds.strength(entry.strength, f"steering.{i}.strength")
            if entry.layers is not None:
                bounds.layers(entry.layers, f"steering.{i}.layers")
        terms = []
        per_task: dict[str, list[tuple[int, float]]] = {}
        for i, entry in enumerate(entries):
            record, vector = await self.ready_vector(entry.task, owner)
            strength = entry.strength if entry.strength is not None else vector.default_strength
            bounds.strength(strength, f"steering.{i}: the default strength of task {record.id!r}")
            per_task.setdefault(record.id, []).append((i, strength))
            bounds.task_strength(record.id, per_task[record.id])
            layers = bounds.layers(entry.layers if entry.layers is not None else vector.layers, f"steering.{i}.layers")
            terms.append(SteeringTerm(vector, strength, layers))
        return terms

    async def engine_plan(self, terms: Sequence[SteeringTerm], entries: Sequence[SteeringEntry]) -> list[SteeringTerm]:
        """What the engine runs for these terms (one per entry): their KV prefixes composed into one."""
        if not PrefixComposer.needed(terms):
            return list(terms)
        try:  # in a thread: the first time prefixes meet at an offset, the model measures its key rotation
            return await asyncio.to_thread(self._prefixes.compose, terms)
        except PrefixError as exc:
            prefixes = [i for i, term in enumerate(terms) if carries_prefix(term)]
            raise ApiErrors.TWO_KV_PREFIXES(
                entries=", ".join(map(str, prefixes)),
                tasks=", ".join(dict.fromkeys(quoted(entries[i].task) for i in prefixes)),
                reason=str(exc),
            ) from None
