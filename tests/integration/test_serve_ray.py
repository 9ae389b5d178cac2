"""`svgt serve` on Ray Serve: a real local Ray, 2 replicas of the app (each with its own tiny backbone and
engine) behind Ray Serve's HTTP proxy, talked to with the official openai client."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from svgt.serve.app import REPLICA_HEADER, VERSION_HEADER
from tests.integration.test_serve import PROMPTS, free_port, module_dir, reference  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


def test_two_ray_serve_replicas_answer_like_svgt_generate(tiny_pipeline, module_dir):  # noqa: F811
    import openai
    import ray
    from ray import serve

    from svgt.serve.ray_serve import ReplicaSpec, deploy

    port = free_port()
    spec = ReplicaSpec(str(tiny_pipeline / "backbone"), str(module_dir), max_batch_size=4, max_tokens=16)
    ray.init(num_cpus=3, include_dashboard=False)
    try:
        deploy(spec, host="127.0.0.1", port=port, replicas=2, cpus_per_replica=1, blocking=False)
        status = serve.status().applications["svgt"]
        assert status.status == "RUNNING"
        replicas = status.deployments["svgt"].replica_states
        assert replicas.get("RUNNING") == 2, replicas
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)

        def ask(prompt: str):
            raw = client.chat.completions.with_raw_response.create(
                model="svgt", messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0)
            return raw.headers, raw.parse()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, PROMPTS * 2))
        # both replicas answered (Ray Serve spread the 16 requests), each naming itself and the module version
        assert len({headers[REPLICA_HEADER] for headers, _ in answers}) == 2
        assert {headers[VERSION_HEADER] for headers, _ in answers} == {"local"}
        # and each answer is the one svgt generate's code path gives (greedy): replicas are the same server
        expected = reference(tiny_pipeline, module_dir, PROMPTS, "svgt", 8).texts
        for i, (_, answer) in enumerate(answers):
            assert answer.choices[0].message.content == expected[i % len(PROMPTS)], i
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10).json()
        assert ready["ready"] is True and ready["replica"]
    finally:
        serve.shutdown()
        ray.shutdown()
