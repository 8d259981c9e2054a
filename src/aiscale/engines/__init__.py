"""LLM engines as replicas: llama.cpp's server (``xllamacpp``), vLLM's, or an OpenAI upstream.

Each backend here is a ``ReplicaBackend`` (``aiscale.replicas.backend``), so the one
``ReplicaPool`` starts, health-checks, drains, replaces after a crash and places engines on
GPUs like any replica. An engine answers HTTP on its own loopback port; the gateway's LLM path
(``aiscale.serving.llm``) talks to it, never this package.

Deliberately empty of imports: the config imports ``engines.spec`` and must not pay for
``httpx`` or the engine libraries it never uses. Modules:

    models.py            locate_model: "smollm2" or a .gguf path -> a file (never downloads);
                         model_source: also an s3:// URI, checked (fetched by the replicas)
    weights.py           WeightsCache: object-store weights fetched once per node, by sha256
    spec.py              EngineSpec: what every replica of one LLM deployment runs
    llamacpp.py          LlamaCppBackend: llama.cpp server processes (the CPU default)
    llamacpp_process.py  the engine process itself (``python -m aiscale.engines.llamacpp_process``)
    vllm.py              VllmBackend: vLLM's OpenAI server processes (GPUs)
    vllm_process.py      the vLLM engine process: vLLM's server run with a lifeline
    upstream.py          UpstreamBackend: existing OpenAI-compatible endpoints by URL
    process.py           EngineHandle and the process plumbing the two local engines share
    metrics.py           parse_engine_metrics: llamacpp:* / vllm:* Prometheus text -> EngineMetrics
"""
