"""The host's half of the compiled form: what it writes into `graph_ops.SteeringTables` before each forward.

- Vectors take a column of the per-slot tables when loaded (`load`), and give it back zeroed when unloaded.
- A plan (a request's terms) takes a block of `PHASES` coefficient rows while requests with it run: per layer,
  how much of each column a token takes before the last prompt token, at it, and after it. The term's layers
  and its mode's position rule are applied here, so the ops need neither. Blocks stay written while their plan
  recurs (a decode batch keeps its plans for many steps) and are reused least recently used first.
- Each forward, `begin` writes `token_row` for the steered requests' tokens (row 0, all zeros, for every other
  token) and `end` zeroes it again, so the dummy and profiling runs vLLM makes outside `_model_forward` stay
  plain.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Sequence

import numpy as np
import torch

from steering.generation.vllm.graph_ops import OP_ADD, OP_NORM, OP_REPLACE, PHASES, SteeringTables
from steering.generation.vllm.plan import decode_plan
from steering.generation.vllm.token_steering import StepRow
from steering.vectors.modes import InjectionModeSpec, mode_spec
from steering.vectors.task_vector import TaskVector

BEFORE, LAST, AFTER = range(PHASES)
_PHASES_OF = {"last": (LAST,), "from_last": (LAST, AFTER), "all": (BEFORE, LAST, AFTER)}
_OP_ROW = {"add": OP_ADD, "replace": OP_REPLACE, "add_norm": OP_NORM}


class GraphSteering:
    """One rank's writer of the persistent buffers."""

    def __init__(self, tables: SteeringTables, max_plans: int, prefixes: Container[str] = ()) -> None:
        self.tables, self.max_plans = tables, max_plans
        self.prefixes = prefixes  # ids of loaded KV prefixes, which `kv_prefix.py` applies: no column here
        self._columns: dict[str, tuple[int, InjectionModeSpec]] = {}  # vector id -> its column, its mode
        self._free = list(range(tables.slots - 1, 0, -1))
        self._blocks: OrderedDict[str, int] = OrderedDict()  # plan -> its block of coefficient rows
        self._written = 0  # token_row entries set by `begin`

    # ------------------------------------------------------------------------------------------ vectors

    @torch.no_grad()
    def load(self, vector_id: str, vector: TaskVector) -> None:
        """Write a vector (already sliced to this rank's heads) into a free column."""
        if vector_id in self._columns:
            return
        if not self._free:
            raise RuntimeError("every column of the steering tables is taken; unload a vector first")
        column = self._free.pop()
        spec = mode_spec(vector.mode)
        tables = self.tables
        dtype = tables.coef.dtype
        if spec.site == "residual":
            tables.residual[:, column] = vector.tensors["residual"].to(tables.residual.device, dtype)
            tables.op_masks[_OP_ROW[spec.op], column] = 1
        else:  # one (means, gate logits) pair per mix: the last prompt token's, then the answer's
            for mix, (means_name, gates_name) in enumerate(zip(spec.tensors[::2], spec.tensors[1::2], strict=True)):
                gates = torch.sigmoid(vector.tensors[gates_name].float())
                targets = (gates[..., None] * vector.tensors[means_name].float()).flatten(1)
                at = column + mix * tables.slots
                tables.gates[:, at] = gates.to(tables.gates.device, dtype)
                tables.targets[:, at] = targets.to(tables.targets.device, dtype)
        self._columns[vector_id] = (column, spec)

    def column(self, vector_id: str) -> int | None:
        entry = self._columns.get(vector_id)
        return None if entry is None else entry[0]

    @torch.no_grad()
    def unload(self, vector_ids: Sequence[str]) -> None:
        tables = self.tables
        for vector_id in vector_ids:
            entry = self._columns.pop(vector_id, None)
            if entry is None:
                continue
            column = entry[0]
            for at in (column, column + tables.slots):
                tables.gates[:, at] = 0
                tables.targets[:, at] = 0
            tables.residual[:, column] = 0
            tables.op_masks[:, column] = 0
            self._free.append(column)
        self._blocks.clear()  # a block names columns: a column given to another vector must not be read by it

    # ------------------------------------------------------------------------------------------ plans

    def _block(self, plan: str) -> torch.Tensor:
        """[layers, PHASES, columns] coefficients of a plan."""
        tables = self.tables
        block = torch.zeros(tables.coef.shape[0], PHASES, tables.coef.shape[2], dtype=torch.float64)
        for term in decode_plan(plan):
            if term.vector_id in self.prefixes:
                continue
            entry = self._columns.get(term.vector_id)
            if entry is None:  # the front end loads every vector before a plan names it: a bug, not a bad request
                raise RuntimeError(f"steering vector {term.vector_id} is not loaded on this rank")
            column, spec = entry
            layers = list(term.layers)
            for phase in _PHASES_OF[spec.positions]:
                answer_mix = spec.op == "head_mix" and phase == AFTER
                block[layers, phase, column + tables.slots if answer_mix else column] += term.strength
        return block.to(tables.coef.dtype)

    def _resident(self, plans: Sequence[str]) -> dict[str, int]:
        """Each plan's block index, writing the blocks of plans not resident yet."""
        wanted = set(plans)
        if len(wanted) > self.max_plans:
            raise RuntimeError(f"{len(wanted)} steering plans in one forward; the tables hold {self.max_plans}")
        for plan in plans:
            if plan in self._blocks:
                self._blocks.move_to_end(plan)
                continue
            used = set(self._blocks.values())
            free = [b for b in range(self.max_plans) if b not in used]
            if free:
                index = free[0]
            else:
                victim = next(p for p in self._blocks if p not in wanted)
                index = self._blocks.pop(victim)
            first = 1 + PHASES * index
            self.tables.coef[:, first : first + PHASES].copy_(self._block(plan))
            self._blocks[plan] = index
        return {plan: self._blocks[plan] for plan in wanted}

    # ------------------------------------------------------------------------------------------ forwards

    def begin(self, rows: Sequence[tuple[str, StepRow]]) -> None:
        """Point each steered request's tokens in this forward at its plan's rows (phase by position)."""
        if not rows:
            return
        blocks = self._resident([plan for plan, _ in rows])
        end = max(row.start + row.count for _, row in rows)
        token_row = np.zeros(end, dtype=np.int64)
        for plan, row in rows:
            positions = np.arange(row.first_position, row.first_position + row.count)
            phase = (positions >= row.prompt_len - 1).astype(np.int64) + (positions >= row.prompt_len)
            token_row[row.start : row.start + row.count] = 1 + PHASES * blocks[plan] + phase
        self.tables.token_row[:end].copy_(torch.from_numpy(token_row))
        self._written = end

    def end(self) -> None:
        if self._written:
            self.tables.token_row[: self._written].zero_()
            self._written = 0
