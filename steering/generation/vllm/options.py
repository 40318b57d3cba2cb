"""How the vLLM engine is started (`VllmOptions`), and whether it runs eager or compiled."""

from __future__ import annotations

import os
from dataclasses import dataclass

EAGER_ENV = "STEER_VLLM_ENFORCE_EAGER"


@dataclass(frozen=True)
class VllmOptions:
    """How the vLLM engine is started (defaults fit a small CPU machine)."""

    tensor_parallel_size: int = 1
    max_num_seqs: int = 8  # requests decoding at once
    max_num_batched_tokens: int | None = None  # tokens per step; smaller splits long prompts into prefill chunks
    max_model_len: int | None = None
    max_slots: int = 32  # activation vectors held by the workers at once
    # KV-prefix columns held at once, over all prefixes (context tuning's take ~100-500 each); each column costs
    # 2 × layers × key-value heads × head_dim × dtype bytes on every rank (46 kB on the default model in float32)
    max_prefix_tokens: int = 2048
    kv_cache_bytes: int = 1 << 30
    block_size: int | None = None  # KV block tokens (vLLM's CPU default 128); prefix caching shares whole blocks
    # Never "auto": vLLM's "auto" runs float32 weights in bfloat16 on CPU (vllm/config/model.py, "Downcast for
    # float32 models"), and the steered answers would no longer be the transformers engine's. The service
    # passes the dtype the transformers engine loaded.
    dtype: str = "float32"
    enable_prefix_caching: bool = True
    seed: int = 0
    # True: Python hooks in eager mode; False: vLLM compiles the model (CUDA graphs on GPUs) with the compiled
    # form's ops in it (`graph_loader.py`); None: `STEER_VLLM_ENFORCE_EAGER` decides, and unset or `auto`
    # compiles where CUDA is present and runs eager on a CPU, where vLLM 0.32 compiles again at every start
    # (minutes) and the compiled step gains little.
    enforce_eager: bool | None = None

    def eager(self) -> bool:
        if self.enforce_eager is not None:
            return self.enforce_eager
        value = os.environ.get(EAGER_ENV, "auto").strip().lower()
        if value not in {"0", "1", "true", "false", "auto", ""}:
            raise ValueError(f"{EAGER_ENV} is 1, 0 or auto, not {value!r}")
        if value in {"auto", ""}:
            import torch

            return not torch.cuda.is_available()
        return value in {"1", "true"}
