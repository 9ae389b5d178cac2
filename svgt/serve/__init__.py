"""`svgt serve`: guided generation behind the OpenAI HTTP API.

* ``protocol``: the request bodies (OpenAI chat and text completions, plus an ``svgt`` field for guidance
  options) and OpenAI-style error bodies;
* ``engine``: one backbone in memory, a bounded request queue and a worker thread that decodes queued
  requests together through the batched, KV-cached guided loop (the same code `svgt generate` runs);
* ``metrics``: the Prometheus series;
* ``app``: the FastAPI application (routes, errors, streaming) and ``serve`` (uvicorn).

Above ``svgt.generate`` and ``svgt.registry`` (serve reuses what generate and the registry resolve); only
``svgt.cli`` imports it.
"""
