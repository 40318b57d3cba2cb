"""In-context vectors (Liu et al. 2023, "In-context Vectors: Making In Context Learning More Effective
and Controllable Through Latent Space Steering").

Each demonstration's input and output are run separately (each inside the task's query template);
the difference of their last-token states, at every layer, is the demonstration's shift. The vector
is the mean shift plus its first principal direction (scaled by the spread along it, sign aligned
with the mean). It is added at every layer and position, and each state is then rescaled to its
original norm.

ICV was built for style (detoxification, formality, sentiment); on word-mapping tasks it does little.
"""

from __future__ import annotations

import torch
from torch import Tensor

from steering.methods.common import (
    Candidate,
    DevSet,
    Job,
    MethodOptions,
    MethodSpec,
    choose,
    finish,
    new_vector,
    split_demonstrations,
    strength_grid,
)
from steering.methods.contrastive import pair_differences
from steering.steer.inject import SteeringTerm
from steering.vectors.task_vector import TaskVector


class IcvOptions(MethodOptions):
    pass


def shift_direction(diffs: Tensor) -> Tensor:
    """diffs [N, layers, hidden] -> [layers, hidden]: mean + first principal component (one std long)."""
    n, layers, hidden = diffs.shape
    flat = diffs.reshape(n, layers * hidden).double()
    mean = flat.mean(0)
    if n < 2:
        return mean.view(layers, hidden).float()
    _, singular, right = torch.linalg.svd(flat - mean, full_matrices=False)
    component = right[0] * (singular[0] / (n - 1) ** 0.5)
    if torch.dot(component, mean) < 0:
        component = -component
    return (mean + component).view(layers, hidden).float()


def compute(job: Job, options: dict) -> TaskVector:
    opts = IcvOptions(**options)
    split = split_demonstrations(job.demonstrations, opts.dev_fraction, opts.seed)
    job.report(stage="reading activations")
    residual = shift_direction(pair_differences(job, split.train))
    all_layers = list(range(job.lm.arch.num_layers))
    layers = [opts.layer] if opts.layer is not None else all_layers
    vector = new_vector(job, opts, "icv", "add_all_norm", {"residual": residual}, layers)
    dev = DevSet.build(job, split, opts.seed)
    job.report(stage="choosing strength")
    strengths = strength_grid(opts.strength, [0.02, 0.05, 0.1, 0.2, 0.4])
    by_strength = choose(job, dev, [Candidate((SteeringTerm(vector, s),), {"strength": s}) for s in strengths])
    vector.default_strength = by_strength.candidate.params["strength"]
    return finish(vector, job, dev, split, by_strength, strength_scan=by_strength.table)


SPEC = MethodSpec("icv", IcvOptions, compute, relative_cost=0.5, style=True)
