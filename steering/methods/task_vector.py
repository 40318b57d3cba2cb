"""Task vectors (Hendel et al. 2023, "In-Context Learning Creates Task Vectors").

The residual state at the last token of few-shot prompts, averaged, replaces the state of a
zero-shot query at the same layer. The layer is chosen on held-out demonstrations.
"""

from __future__ import annotations

from steering.methods.capture import last_token_activations
from steering.methods.common import (
    Candidate,
    DevSet,
    Job,
    MethodOptions,
    MethodSpec,
    choose,
    few_shot_prompts,
    finish,
    layer_grid,
    new_vector,
    split_demonstrations,
    strength_grid,
)
from steering.steer.inject import SteeringTerm
from steering.vectors.task_vector import TaskVector


class TaskVectorOptions(MethodOptions):
    pass


def compute(job: Job, options: dict) -> TaskVector:
    opts = TaskVectorOptions(**options)
    split = split_demonstrations(job.demonstrations, opts.dev_fraction, opts.seed)
    job.report(stage="reading activations")
    residual = last_token_activations(job.lm, few_shot_prompts(job, split.train, opts))["residual"].mean(0)
    vector = new_vector(job, opts, "task_vector", "replace_last", {"residual": residual})
    dev = DevSet.build(job, split, opts.seed)
    job.report(stage="choosing layer")
    layers = [opts.layer] if opts.layer is not None else layer_grid(job.lm.arch.num_layers)
    by_layer = choose(job, dev, [Candidate((SteeringTerm(vector, 1.0, (la,)),), {"layer": la}) for la in layers])
    layer = by_layer.candidate.params["layer"]
    job.report(stage="choosing strength")
    strengths = strength_grid(opts.strength, [0.5, 0.75, 1.0, 1.25])
    by_strength = choose(
        job, dev, [Candidate((SteeringTerm(vector, s, (layer,)),), {"strength": s}) for s in strengths]
    )
    vector.layers = [layer]
    vector.default_strength = by_strength.candidate.params["strength"]
    return finish(vector, job, dev, split, by_strength, layer_scan=by_layer.table, strength_scan=by_strength.table)


SPEC = MethodSpec("task_vector", TaskVectorOptions, compute, relative_cost=1.0, tried_by_auto=True)
