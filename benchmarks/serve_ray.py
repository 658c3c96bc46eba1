"""The gateway on Ray Serve: 1 vs 2 engine replicas, and adapter loads by routing.

A local Ray instance (127.0.0.1, ``--cpus`` CPU resources) serves a tiny random Llama with
6 rank-4 adapters; each engine replica has 2 sequences and 2 adapter slots, and keeps
``--adapters-per-replica`` adapters registered (host memory, paged through the slots; a
registration is a load). The same request sequence (6 adapters, uniformly shuffled, fixed
seed) is sent through the ``openai`` client with ``--concurrency`` requests in flight:

- 1 replica, then 2 replicas, adapter routing (each adapter has a home replica): throughput
  and adapter loads;
- 2 replicas with Ray Serve's multiplexed routing (``ray.routing: multiplex``) and with
  Ray's default routing (``ray.routing: any``): adapter loads;
- 2 replicas, adapter routing, with only 2 adapters registered per replica (= the slots);
- round-robin over 2 replicas, each an LRU of the same size, simulated on the same sequence.

Adapter loads are the replicas' own counters (``GET /v1/replicas``). On a 2-core machine
the scaling figure says little (both replicas share the cores); the load counts are the
point. Prints the machine and ratios against runs of the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from _scratch import scratch_dir

from openledger.gateway.ray.routing import round_robin_loads

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ADAPTERS = [f"a{i}" for i in range(6)]
ENGINE = {"max_num_seqs": 2, "max_adapter_slots": 2, "kv_cache_memory": 8 * 2**20}
MESSAGES = [{"role": "user", "content": "Tell me about ledgers."}]


async def send(port: int, key: str, sequence: list[str], concurrency: int, tokens: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(model: str) -> int:
        async with gate:
            reply = await client.chat.completions.create(
                model=model,
                messages=MESSAGES,
                max_tokens=tokens,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            return int(reply.usage.completion_tokens)

    try:
        return sum(await asyncio.gather(*(one(m) for m in sequence)))
    finally:
        await client.close()


def run_case(
    base: Path, adapters: dict[str, Path], folder: Path, args: argparse.Namespace, **ray: Any
) -> dict[str, float]:
    """Deploy, warm up, send the sequence; return throughput and adapter loads."""
    from ray import serve

    from openledger.gateway import GatewayConfig, ReceiptLedger
    from openledger.gateway.ray import build_application

    ledger = folder / f"ledger-{time.time_ns()}.db"
    with ReceiptLedger(ledger) as book:
        key, _ = book.create_key(name="bench", role="admin")
    config = GatewayConfig(
        model=str(base),
        served_model_name="tiny",
        adapters={n: str(p) for n, p in adapters.items()},
        ledger=str(ledger),
        port=args.port,
        engine=ENGINE,
        ray={"num_cpus": args.cpus / 4, "ingress_num_cpus": args.cpus / 4, **ray},
    )
    serve.run(build_application(config), name="openledger", route_prefix="/")
    try:
        asyncio.run(send(args.port, key, ["tiny", "tiny"], 2, 2))  # NOTE: warm-up
        headers = {"Authorization": f"Bearer {key}"}
        url = f"http://127.0.0.1:{args.port}/v1/replicas"
        before = httpx.get(url, headers=headers, timeout=30).json()["adapter_loads"]
        rng = random.Random(args.seed)
        sequence = [name for name in ADAPTERS for _ in range(args.per_adapter)]
        rng.shuffle(sequence)
        start = time.perf_counter()
        tokens = asyncio.run(send(args.port, key, sequence, args.concurrency, args.tokens))
        seconds = time.perf_counter() - start
        loads = httpx.get(url, headers=headers, timeout=30).json()["adapter_loads"] - before
        with ReceiptLedger(ledger) as book:
            receipts = book.count_receipts()
        return {
            "tok_s": tokens / seconds,
            "loads": loads,
            "requests": len(sequence),
            "receipts": receipts - 2,
        }
    finally:
        serve.delete("openledger")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2, help="CPU resources of the Ray instance")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--per-adapter", type=int, default=8, help="requests per adapter")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--adapters-per-replica", type=int, default=3, help="adapters registered per replica"
    )
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray
    from ray import serve
    from tests.serve.serve_lora_factory import make_peft_adapter

    from openledger.models import save_tiny_model

    folder = scratch_dir("openledger-serve-ray-")
    base = save_tiny_model(folder / "llama", "llama", seed=1)
    targets = ["q_proj", "v_proj", "down_proj"]
    adapters = {
        name: make_peft_adapter(base, folder / name, r=4, targets=targets, seed=30 + i)
        for i, name in enumerate(ADAPTERS)
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        args.port = int(sock.getsockname()[1])
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        held = {"adapters_per_replica": args.adapters_per_replica}
        one = run_case(base, adapters, folder, args, replicas=1, **held)
        two = run_case(base, adapters, folder, args, replicas=2, **held)
        multiplex = run_case(base, adapters, folder, args, replicas=2, routing="multiplex", **held)
        anywhere = run_case(base, adapters, folder, args, replicas=2, routing="any", **held)
        slots = ENGINE["max_adapter_slots"]
        tight = run_case(base, adapters, folder, args, replicas=2, adapters_per_replica=slots)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(session, ignore_errors=True)
    rng = random.Random(args.seed)
    sequence = [name for name in ADAPTERS for _ in range(args.per_adapter)]
    rng.shuffle(sequence)
    rr = round_robin_loads(sequence, 2, args.adapters_per_replica)
    rr_tight = round_robin_loads(sequence, 2, ENGINE["max_adapter_slots"])
    held = args.adapters_per_replica
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores,")
    print(f"  load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    print(f"workload: {len(sequence)} chat requests, 6 adapters shuffled (seed {args.seed}),")
    print(f"  {args.tokens} new tokens each, {args.concurrency} in flight, {args.cpus} Ray CPUs")
    print(f"engine: 2 adapter slots per replica; {held} adapters registered per replica")
    rows = [
        ("1 replica,  adapter routing", one),
        ("2 replicas, adapter routing", two),
        ("2 replicas, Ray multiplexing", multiplex),
        ("2 replicas, Ray's default", anywhere),
    ]
    for label, case in rows:
        print(f"{label:30s} {case['tok_s']:7.1f} tok/s, {case['loads']:3.0f} loads")
    print(f"2 replicas, round-robin (simulated LRU of {held} each):  {rr:3d} loads")
    print(f"throughput 2 / 1 replicas: {two['tok_s'] / one['tok_s']:.2f}x")
    for label, case in rows[1:]:
        print(f"adapter loads, {label[12:]:20s} / round-robin: {case['loads'] / rr:.2f}")
    print(
        f"with {ENGINE['max_adapter_slots']} registered per replica (= slots): adapter routing "
        f"{tight['loads']:.0f} loads, round-robin {rr_tight}: {tight['loads'] / rr_tight:.2f}"
    )
    cases = (one, two, multiplex, anywhere, tight)
    print("receipts = requests:", all(c["receipts"] == c["requests"] for c in cases))


if __name__ == "__main__":
    main()
