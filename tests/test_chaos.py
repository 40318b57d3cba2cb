"""Chaos: real servers (`python -m app`) on a dedicated redis-server that is killed, paused, wiped or full.

What must hold whatever Redis does: every answer is 2xx, an expected 4xx, or 503 with Retry-After,
never another 5xx; a request that needs the store answers 503 within about 2 s; a ready task whose
vector a replica holds keeps serving; tasks registered around an outage end ready without anyone
polling them; no lock is left behind. Each scenario prints one line of counts (run with -s):

    CHAOS <scenario> requests=.. 2xx=.. 4xx=.. 503=.. 5xx_other=.. transport_errors=.. t503_max_s=.. ...
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from tests.api_helpers import ANTONYMS, task_body, wait_task_sync
from tests.conftest import ServerProcess
from tests.store_fixtures import RedisServer

LOCK_TTL_S = 3.0
PROMPT = "Q: hot\nA:"
# Tasks registered under load in (a) take long enough to pile up: some are still computing or waiting
# when Redis dies, and when a replica dies after it.
MEDIUM_STEPS = 250


def replica_env(server: RedisServer, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "STEER_MODEL": "tiny:llama",
        "STEER_REDIS_URL": server.url,
        "STEER_REDIS_PREFIX": prefix,
        "STEER_API_KEYS": "",
        "STEER_LOCK_TTL_S": str(LOCK_TTL_S),
        "STEER_RECONCILE_INTERVAL_S": "1",
        # Many small tasks from one (open) key in a few seconds: the per-key quotas are not under test here.
        "STEER_MAX_COMPUTATIONS_PER_KEY": "10000",
        "STEER_MAX_TASKS_PER_KEY": "100000",
        **extra,
    }


def quick_task(n: int) -> dict[str, Any]:
    """A task of its own (its own id), cheap to compute on the tiny model."""
    return task_body([*ANTONYMS, (f"in{n}", f"out{n}")], options={"num_prompts": 4, "k_shot": 2})


def medium_task(n: int) -> dict[str, Any]:
    """A task of its own that takes a second or so: gate training that never stops early."""
    options = {"steps": MEDIUM_STEPS, "patience": MEDIUM_STEPS, "seed": 1}
    return task_body([*ANTONYMS, (f"in{n}", f"out{n}")], method="soft_injection", options=options)


def generate_body(task_id: str) -> dict[str, Any]:
    return {"prompt": PROMPT, "max_new_tokens": 3, "steering": [{"task": task_id}]}


@dataclass
class Outcome:
    kind: str
    status: int  # -1: no HTTP answer (connection refused, client timeout)
    seconds: float
    retry_after: str | None
    at: float  # monotonic time the request was sent
    detail: str = ""


@dataclass
class Tally:
    """Every request a scenario sent, and the one line of counts it prints."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, client: httpx.Client, kind: str, method: str, url: str, **kw: Any) -> Outcome:
        t0 = time.monotonic()
        try:
            r = client.request(method, url, **kw)
            out = Outcome(kind, r.status_code, time.monotonic() - t0, r.headers.get("retry-after"), t0, r.text[:300])
        except httpx.HTTPError as exc:
            out = Outcome(kind, -1, time.monotonic() - t0, None, t0, f"{type(exc).__name__}: {exc}")
        with self.lock:
            self.outcomes.append(out)
        return out

    def of(self, status: int | None = None, kind: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if (status is None or o.status == status) and (kind is None or o.kind == kind)]

    def line(self, **extra: Any) -> str:
        o = self.outcomes
        t503 = [x.seconds for x in self.of(503)]
        fields = {
            "requests": len(o),
            "2xx": sum(200 <= x.status < 300 for x in o),
            "4xx": sum(400 <= x.status < 500 for x in o),
            "503": len(t503),
            "5xx_other": sum(x.status >= 500 and x.status != 503 for x in o),
            "transport_errors": sum(x.status == -1 for x in o),
            "t503_max_s": round(max(t503), 2) if t503 else None,
            "t503_median_s": round(statistics.median(t503), 2) if t503 else None,
            **extra,
        }
        text = f"CHAOS {self.name} " + " ".join(f"{k}={v}" for k, v in fields.items())
        print(text)
        return text

    def assert_no_server_errors(self, allowed_4xx: tuple[int, ...] = ()) -> None:
        bad = [o for o in self.outcomes if o.status >= 500 and o.status != 503]
        assert not bad, [(o.kind, o.status, o.detail) for o in bad[:5]]
        no_retry_after = [o for o in self.of(503) if not o.retry_after]
        assert not no_retry_after, [(o.kind, o.detail) for o in no_retry_after[:5]]
        odd = [o for o in self.outcomes if 400 <= o.status < 500 and o.status not in allowed_4xx]
        assert not odd, [(o.kind, o.status, o.detail) for o in odd[:5]]


@contextmanager
def load(workers: list[Callable[[threading.Event], None]]) -> Iterator[None]:
    """Run each worker in its own thread until the block ends (each loops until the event is set)."""
    stop = threading.Event()
    threads = [threading.Thread(target=w, args=(stop,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)


def records(server: RedisServer, prefix: str) -> dict[str, dict[str, Any]]:
    client = server.client()
    try:
        keys = list(client.scan_iter(match=f"{prefix}task:*", count=1000))
        return {k.decode().rsplit(":", 1)[1]: json.loads(v) for k, v in zip(keys, client.mget(keys), strict=True) if v}
    finally:
        client.close()


def lock_keys(server: RedisServer, prefix: str) -> list[bytes]:
    client = server.client()
    try:
        return list(client.scan_iter(match=f"{prefix}lock:*", count=1000))
    finally:
        client.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout_s, f"{what}: not after {timeout_s} s"
        time.sleep(0.2)
    return time.monotonic() - t0


def ready_task(url: str, body: dict[str, Any]) -> str:
    with httpx.Client(base_url=url, timeout=60) as c:
        task_id = c.post("/v1/tasks", json=body).json()["id"]
        assert wait_task_sync(c, task_id)["status"] == "ready"
        # Generate once, so that this replica holds the vector.
        assert c.post("/v1/generate", json=generate_body(task_id)).status_code == 200
    return task_id


# a. kill -9 under load, restart with the AOF: tasks registered around the outage end ready on their own


def test_redis_killed_under_load_and_restarted(
    redis_server_factory: Callable[..., RedisServer], server_factory: Callable[..., ServerProcess]
) -> None:
    # appendfsync always: what Redis acknowledged survives kill -9 (with everysec, up to a second may not).
    rs = redis_server_factory("--appendonly", "yes", "--appendfsync", "always")
    prefix = f"chaos-a-{uuid.uuid4().hex[:6]}:"
    replicas = [server_factory(**replica_env(rs, prefix)) for _ in range(2)]
    task = ready_task(replicas[0].url, quick_task(0))
    ready_task(replicas[1].url, quick_task(0))  # both replicas hold its vector
    tally = Tally("a-redis-kill-9")
    registered: set[str] = set()
    counter = iter(range(1, 1_000_000))

    def generator(i: int) -> Callable[[threading.Event], None]:
        def run(stop: threading.Event) -> None:
            with httpx.Client(base_url=replicas[i % 2].url, timeout=30) as c:
                while not stop.is_set():
                    tally.send(c, "generate", "POST", "/v1/generate", json=generate_body(task))

        return run

    def registrar(i: int) -> Callable[[threading.Event], None]:
        def run(stop: threading.Event) -> None:
            with httpx.Client(base_url=replicas[i % 2].url, timeout=30) as c:
                while not stop.is_set():
                    body = medium_task(next(counter))
                    out = tally.send(c, "register", "POST", "/v1/tasks", json=body)
                    if out.status in (200, 202):
                        registered.add(json.loads(out.detail)["id"])
                    stop.wait(0.8)

        return run

    with load([generator(0), generator(1), registrar(0), registrar(1)]):
        time.sleep(3)
        killed_at = time.monotonic()
        rs.kill()
        time.sleep(5)
        rs.restart(empty=False)  # the AOF brings back everything acknowledged
        restarted_at = time.monotonic()
        time.sleep(4)

    # Replica 0 goes away too: what it was computing or following must be adopted by replica 1.
    replicas[0].proc.kill()
    replicas[0].proc.wait(timeout=30)
    stored = records(rs, prefix)
    unfinished_at_replica_kill = sum(r["status"] in ("pending", "running") for r in stored.values())
    assert registered <= set(stored), registered - set(stored)  # nothing acknowledged was lost

    def all_ready() -> bool:
        return all(r["status"] == "ready" for r in records(rs, prefix).values())

    # A bound for "nothing stuck", not a speed: one replica computes what both registered, and `make test`
    # runs this beside other tests on 2 cores.
    settle_s = wait_until(all_ready, 300, "every stored task ready (nobody polling)")
    locks_s = wait_until(lambda: not lock_keys(rs, prefix), LOCK_TTL_S + 10, "no lock key left")

    during = [o for o in tally.outcomes if killed_at <= o.at < restarted_at]
    after = [o for o in tally.outcomes if o.at >= restarted_at + 1]
    tally.line(
        tasks_registered=len(registered),
        tasks_stored=len(stored),
        unfinished_at_replica_kill=unfinished_at_replica_kill,
        compute_s_max=round(max(r["summary"]["metrics"]["compute_seconds"] for r in records(rs, prefix).values()), 2),
        generate_2xx_during_outage=sum(o.kind == "generate" and o.status == 200 for o in during),
        requests_during_outage=len(during),
        all_ready_after_s=round(settle_s, 1),
        locks_gone_after_s=round(locks_s, 1),
        after_restart_2xx=f"{sum(200 <= o.status < 300 for o in after)}/{len(after)}",
    )
    tally.assert_no_server_errors()
    assert not tally.of(-1), [o.detail for o in tally.of(-1)[:5]]
    assert tally.of(503, "register"), "the outage was not seen"
    assert registered, "nothing was registered"
    # Refused connections are seen at once: nothing waits for a timeout.
    assert max(o.seconds for o in tally.of(503)) < 2.5
    # Once Redis is back (and the fail-fast second has passed), registering works again.
    assert any(o.kind == "register" and o.status in (200, 202) for o in after)


# b. SIGSTOP: the store answers nothing; 503 within ~2 s, cached tasks keep generating


def test_redis_paused_requests_answer_503_fast_and_cached_tasks_keep_serving(
    redis_server_factory: Callable[..., RedisServer], server_factory: Callable[..., ServerProcess]
) -> None:
    rs = redis_server_factory()
    prefix = f"chaos-b-{uuid.uuid4().hex[:6]}:"
    app = server_factory(**replica_env(rs, prefix))
    task = ready_task(app.url, quick_task(0))
    tally = Tally("b-redis-sigstop-15s")
    counter = iter(range(1, 1_000_000))

    def store_user(stop: threading.Event) -> None:
        with httpx.Client(base_url=app.url, timeout=30) as c:
            while not stop.is_set():
                tally.send(c, "get", "GET", f"/v1/tasks/{task}")
                tally.send(c, "list", "GET", "/v1/tasks")
                tally.send(c, "register", "POST", "/v1/tasks", json=quick_task(next(counter)))
                stop.wait(0.2)

    def generator(stop: threading.Event) -> None:
        with httpx.Client(base_url=app.url, timeout=30) as c:
            while not stop.is_set():
                tally.send(c, "generate", "POST", "/v1/generate", json=generate_body(task))

    with load([store_user, generator]):
        time.sleep(1)
        rs.pause()
        paused_at = time.monotonic()
        time.sleep(15)
        rs.resume()
        resumed_at = time.monotonic()
        time.sleep(4)

    during = [o for o in tally.outcomes if paused_at + 0.1 <= o.at and o.at + o.seconds < resumed_at]
    store_during = [o for o in during if o.kind != "generate"]
    gen_during = [o for o in during if o.kind == "generate"]
    after = [o for o in tally.outcomes if o.at >= resumed_at + 2]
    tally.line(
        store_requests_during=len(store_during),
        store_503_during=sum(o.status == 503 for o in store_during),
        store_max_s_during=round(max(o.seconds for o in store_during), 2),
        generate_200_during=f"{sum(o.status == 200 for o in gen_during)}/{len(gen_during)}",
        generate_max_s_during=round(max(o.seconds for o in gen_during), 2) if gen_during else None,
        after_resume_2xx=f"{sum(200 <= o.status < 300 for o in after)}/{len(after)}",
    )
    tally.assert_no_server_errors()
    assert not tally.of(-1), [o.detail for o in tally.of(-1)[:5]]
    assert store_during and all(o.status == 503 for o in store_during), [(o.kind, o.status) for o in store_during]
    assert max(o.seconds for o in store_during) < 3.0  # the store's 2 s deadline, plus the request's own time
    assert gen_during and all(o.status == 200 for o in gen_during), [(o.status, o.detail) for o in gen_during[:5]]
    assert after and all(200 <= o.status < 300 for o in after), [(o.kind, o.status, o.detail) for o in after[:5]]


# c. restart empty: the service keeps answering; what was lost is 404 and can be registered again


def test_redis_restarted_empty(
    redis_server_factory: Callable[..., RedisServer], server_factory: Callable[..., ServerProcess]
) -> None:
    rs = redis_server_factory()
    prefix = f"chaos-c-{uuid.uuid4().hex[:6]}:"
    app = server_factory(**replica_env(rs, prefix))
    body = quick_task(0)
    task = ready_task(app.url, body)
    tally = Tally("c-redis-restart-empty")

    def user(stop: threading.Event) -> None:
        with httpx.Client(base_url=app.url, timeout=30) as c:
            while not stop.is_set():
                tally.send(c, "get", "GET", f"/v1/tasks/{task}")
                tally.send(c, "list", "GET", "/v1/tasks")
                tally.send(c, "generate", "POST", "/v1/generate", json=generate_body(task))
                stop.wait(0.1)

    with load([user]):
        time.sleep(1)
        rs.restart(empty=True)
        restarted_at = time.monotonic()
        time.sleep(3)
    after = [o for o in tally.outcomes if o.at >= restarted_at + 1.5]

    with httpx.Client(base_url=app.url, timeout=30) as c:
        gone = tally.send(c, "get", "GET", f"/v1/tasks/{task}")
        listed = tally.send(c, "list", "GET", "/v1/tasks")
        again = tally.send(c, "register", "POST", "/v1/tasks", json=body)
        assert again.status == 202 and json.loads(again.detail)["id"] == task, again
        assert wait_task_sync(c, task)["status"] == "ready"
        served = tally.send(c, "generate", "POST", "/v1/generate", json=generate_body(task))
    tally.line(after_restart=",".join(f"{o.kind}:{o.status}" for o in after[-6:]))
    tally.assert_no_server_errors(allowed_4xx=(404,))
    assert not tally.of(-1), [o.detail for o in tally.of(-1)[:5]]
    assert gone.status == 404 and listed.status == 200 and json.loads(listed.detail)["tasks"] == []
    assert served.status == 200
    # After the restart the lost task is unknown everywhere: the replica does not serve it from memory either.
    assert all(o.status in (200, 404) for o in after), [(o.kind, o.status) for o in after]
    assert any(o.kind == "generate" and o.status == 404 for o in after)


# d. Redis full (maxmemory, noeviction): registering is refused, what is stored stays readable


def test_redis_full(
    redis_server_factory: Callable[..., RedisServer], server_factory: Callable[..., ServerProcess]
) -> None:
    rs = redis_server_factory("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    prefix = f"chaos-d-{uuid.uuid4().hex[:6]}:"
    app = server_factory(**replica_env(rs, prefix))
    task = ready_task(app.url, quick_task(0))
    spare = ready_task(app.url, quick_task(1))
    filler = rs.client()
    try:
        n = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for n in range(10_000):
                filler.set(f"filler:{n}", b"x" * 20_000)
        # Full. Redis frees client buffers now and then, which would let a small write through: hold it
        # over the limit whatever it frees meanwhile.
        used = int(filler.info("memory")["used_memory"])
        filler.config_set("maxmemory", used - 256_000)
        tally = Tally("d-redis-full")
        with httpx.Client(base_url=app.url, timeout=30) as c:
            for i in range(5):
                tally.send(c, "register", "POST", "/v1/tasks", json=quick_task(100 + i))
                tally.send(c, "get", "GET", f"/v1/tasks/{task}")
                tally.send(c, "list", "GET", "/v1/tasks")
                tally.send(c, "generate", "POST", "/v1/generate", json=generate_body(task))
            # Deleting frees space (Redis lets deletions through when full): the way out for an operator.
            deleted = tally.send(c, "delete", "DELETE", f"/v1/tasks/{spare}")
            filler.delete(*[f"filler:{i}" for i in range(n + 1)])
            time.sleep(1.1)  # past the store's fail-fast window
            recovered = tally.send(c, "register", "POST", "/v1/tasks", json=quick_task(200))
        tally.line(
            filler_keys=n,
            maxmemory=used - 256_000,
            delete_when_full=deleted.status,
            register_after_freeing=recovered.status,
        )
    finally:
        filler.close()
    tally.assert_no_server_errors()
    registers = tally.of(kind="register")[:-1]
    assert registers and all(o.status == 503 and "store_full" in o.detail for o in registers), [
        (o.status, o.detail) for o in registers
    ]
    assert all(o.status == 200 for o in tally.outcomes if o.kind in ("get", "list", "generate"))
    assert deleted.status == 204
    assert recovered.status == 202
