"""Contrastive activation addition (CAA, Rimsky et al. 2023; ActAdd, Turner et al. 2023).

Each demonstration is a contrast pair: `output` is the positive example, `input` the negative one.
The per-layer mean difference of their last-token states is added from the last prompt token on, at
a layer chosen on held-out pairs. Strength may be negative, which steers away from the positives.
"""

from __future__ import annotations

import time

from steering.capture import last_token_activations
from steering.inject import SteeringTerm
from steering.methods.common import (
    Candidate,
    DevSet,
    Job,
    MethodOptions,
    baseline_metrics,
    choose,
    layer_grid,
    split_demonstrations,
    strength_grid,
)
from steering.vectors import TaskVector


class ContrastiveOptions(MethodOptions):
    pass


OPTIONS = ContrastiveOptions


def compute(job: Job, options: dict) -> TaskVector:
    opts = ContrastiveOptions(**options)
    started = time.perf_counter()
    split = split_demonstrations(job.demonstrations, opts.dev_fraction, opts.seed)
    job.report(stage="reading activations")
    positive = last_token_activations(job.lm, [d.output for d in split.train])["residual"]
    negative = last_token_activations(job.lm, [d.input for d in split.train])["residual"]
    vector = TaskVector(
        method="contrastive",
        mode="add_from_last",
        tensors={"residual": (positive - negative).mean(0)},
        layers=[0],
        default_strength=1.0,
        fingerprint=job.lm.fingerprint,
        template=job.template,
        num_demonstrations=len(job.demonstrations),
        options=opts.model_dump(),
    )
    dev = DevSet.build(job.lm, job.template, split, opts.k_shot, opts.seed)
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
    vector.metrics = {
        **baseline_metrics(job, dev),
        "dev_steered_accuracy": best.accuracy,
        "dev_steered_logprob": best.logprob,
        "held_out": split.held_out,
        "dev_size": len(split.dev),
        "scan": best.table,
    }
    vector.compute_seconds = time.perf_counter() - started
    return vector
