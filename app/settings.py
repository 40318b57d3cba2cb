"""All service settings in one place, read from the environment with the prefix STEER_."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from steering.methods.auto_budget import DEFAULT_TIME_LIMIT_S
from steering.model.loading import default_cache_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEER_", env_file=".env", extra="ignore")

    # Model
    model: str = Field(
        "default",
        description="'default' (packaged SmolLM2), another packaged model's short name (steering/model/packaged.py), "
        "a local .gguf file, 'tiny:<family>', a hub id or a folder.",
    )
    device: str = "auto"
    dtype: str = "auto"
    torch_threads: int | None = Field(None, description="torch intra-op threads; unset = torch's choice.")

    # Network
    host: str = "127.0.0.1"
    port: int = 8000

    # Store: Redis when set, else SQLite under data_dir
    redis_url: str | None = None
    redis_prefix: str = "steer:"
    data_dir: Path = Field(default_factory=lambda: default_cache_dir() / "data")

    # Auth: comma-separated keys; empty = open server, which only listens on loopback unless allow_open
    api_keys: str = ""
    allow_open: bool = Field(False, description="Serve without API keys on a non-loopback host (trusted networks).")

    # Limits
    max_body_bytes: int = 1_000_000
    max_vector_bytes: int = Field(256_000_000, description="Body limit of vector imports.")
    max_concurrent_imports: int = Field(2, ge=1, description="Vector imports read at once; more answer 429.")
    max_demonstrations: int = 512
    max_demonstration_chars: int = 2_000
    max_prompt_tokens: int = 2_048
    max_new_tokens: int = 512
    max_steering_entries: int = 8
    max_strength: float = 50.0
    max_tasks_per_key: int = Field(1_000, description="Stored tasks per API key (or for the open server).")
    max_computations_per_key: int = Field(4, description="Tasks of one key pending or running at once.")
    stream_send_timeout_s: float = Field(
        30.0, description="A streaming client that reads nothing for this long is cut."
    )

    # Connections: how long reading a request may take, and how many connections are held
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request line and headers must arrive within this long of the connection opening (or of "
        "the request's first byte on a kept-alive connection); else the connection closes (408 if a request began).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request body must arrive within this long, plus 1 s per body_min_rate bytes; else 408.",
    )
    body_min_rate: int = Field(
        50_000, ge=1, description="Bytes per second that earn a slow body more time (large uploads on slow links)."
    )
    discard_body_bytes: int = Field(
        4_000_000,
        ge=0,
        description="After an answer given before the body was read (413, 401, 400), up to this many bytes of the "
        "rest are read and dropped before the connection closes, so clients that send before reading see the answer.",
    )
    discard_body_timeout_s: float = Field(
        5.0, ge=0, description="The longest that dropping the rest of a body may take."
    )
    max_connections: int = Field(
        1_000, ge=2, description="Open connections and requests in flight; beyond it requests get 503 at once."
    )

    # Role: `api` serves and never computes vectors; `worker` computes and does not serve generation; `both`
    role: Literal["api", "worker", "both"] = "both"

    # Engine: `transformers` (ours, the reference) or `vllm` (STEER_ENGINE=vllm make serve installs it)
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="Generation engine; vectors are always computed on transformers."
    )
    vllm_max_slots: int = Field(32, ge=1, description="vllm: vectors held by vLLM's workers at once (LRU).")
    vllm_max_prefix_tokens: int = Field(
        2048, ge=1, description="vllm: KV-prefix columns (context tuning's tasks) held by the workers at once (LRU)."
    )
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vllm: tensor-parallel ranks (heads split).")
    vllm_kv_cache_bytes: int = Field(1 << 30, ge=1 << 20, description="vllm: memory for vLLM's KV cache.")

    # Batching
    scheduler: Literal["continuous", "static"] = Field(
        "continuous", description="continuous: rows join and leave the running batch at each step; static: windows."
    )
    max_batch_size: int = Field(8, description="Rows generating at once (continuous) or per batch (static).")
    batch_window_ms: float = Field(15.0, description="static only: how long a request waits for company.")
    prefill_chunk_tokens: int = Field(
        256, ge=1, description="continuous: prompt tokens per prefill pass; longer prompts are prefilled in chunks."
    )
    priority_new_tokens: int = Field(
        16, ge=0, description="continuous: requests for at most this many tokens decode first (0 = off; on a GPU)."
    )
    max_queue: int = 64

    # Vector computation
    vector_cache_bytes: int = Field(1 << 30, description="Process memory for vectors already read or computed.")
    lock_ttl_s: float = 60.0
    compute_patience_s: float = Field(
        2.0, description="A computation waiting this long for the model gets one slice even while generation is busy."
    )
    compute_timeout_s: float = DEFAULT_TIME_LIMIT_S  # `auto` keeps its candidates within 5/6 of it
    max_attempts: int = Field(3, description="Computations of a task that may end with no outcome before it fails.")
    reconcile_interval_s: float = Field(10.0, description="How often each replica adopts tasks whose lock expired.")

    # Shutdown: in-flight generations get this long to finish after SIGTERM; queued ones get 503
    drain_timeout_s: float = 20.0

    def keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]
