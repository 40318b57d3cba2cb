"""Contrastive activation addition (CAA, Rimsky et al. 2023; ActAdd, Turner et al. 2023).

Each demonstration is a contrast pair: `output` is the positive example, `input` the negative one.
The per-layer mean difference of their last-token states (each read inside the task's query
template) is added from the last prompt token on, at a layer chosen on held-out pairs. Strength may
be negative, which steers away from the positives.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from steering.methods.capture import last_token_activations
from steering.methods.common import (
    Candidate,
    DevSet,
    Job,
    MethodOptions,
    MethodSpec,
    choose,
    finish,
    framed,
    layer_grid,
    new_vector,
    split_demonstrations,
    strength_grid,
)
from steering.steer.inject import SteeringTerm
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration


class ContrastiveOptions(MethodOptions):
    pass


def pair_differences(job: Job, pairs: Sequence[Demonstration]) -> Tensor:
    """[N, layers, hidden]: each pair's last-token residual state of its output minus that of its input, both
    read inside the task's query template (`framed`). Contrastive averages them; ICV takes their main direction."""
    outputs = last_token_activations(job.lm, framed(job, [d.output for d in pairs]))["residual"]
    inputs = last_token_activations(job.lm, framed(job, [d.input for d in pairs]))["residual"]
    return outputs - inputs


def compute(job: Job, options: dict) -> TaskVector:
    opts = ContrastiveOptions(**options)
    split = split_demonstrations(job.demonstrations, opts.dev_fraction, opts.seed)
    job.report(stage="reading activations")
    residual = pair_differences(job, split.train).mean(0)  # positives (outputs) minus negatives (inputs)
    vector = new_vector(job, opts, "contrastive", "add_from_last", {"residual": residual})
    dev = DevSet.build(job, split, opts.seed)
    job.report(stage="choosing layer and strength")
    layers = [opts.layer] if opts.layer is not None else layer_grid(job.lm.arch.num_layers, limit=12)
    strengths = strength_grid(opts.strength, [0.5, 1.0, 2.0, 4.0])
    best = choose(
        job,
        dev,
        [
            Candidate((SteeringTerm(vector, s, (la,)),), {"layer": la, "strength": s})
            for la in layers
            for s in strengths
        ],
    )
    vector.layers = [best.candidate.params["layer"]]
    vector.default_strength = best.candidate.params["strength"]
    return finish(vector, job, dev, split, best, scan=best.table)


SPEC = MethodSpec("contrastive", ContrastiveOptions, compute, relative_cost=1.0, style=True)
