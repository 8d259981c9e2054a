"""``serve``, ``deploy``, ``scale``, ``bench``, ``detect`` and ``demo``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from aiscale.cli._common import (
    DataDirOption,
    KeyOption,
    RegistryUrlOption,
    UrlOption,
    _admin_call,
    _stdout,
    app,
    open_artifacts,
    reported_errors,
    resolve_paths,
)
from aiscale.config import DeploymentConfig, load_config, parse_config
from aiscale.data_dir import make_private_data_dir
from aiscale.engines.models import is_llm_model_arg, served_name_of
from aiscale.errors import InvalidInput
from aiscale.registry import SqlRegistry


def _deployment_flags(
    name: str,
    model: str,
    version: str | None,
    replicas: int | None,
    max_batch_size: int | None,
    max_batch_delay_ms: float | None,
    timeout_ms: float | None,
    num_threads: int | None,
    cache_mb: float | None,
    cpus: float | None = None,
    memory_mb: int | None = None,
) -> DeploymentConfig:
    """A deployment config from command-line flags; unset flags keep the defaults."""
    batching: dict[str, Any] = {}
    if max_batch_size is not None:
        batching["max_batch_size"] = max_batch_size
    if max_batch_delay_ms is not None:
        batching["max_batch_delay_ms"] = max_batch_delay_ms
    data: dict[str, Any] = {"name": name, "model": model, "version": version, "batching": batching}
    if replicas is not None:
        data["replicas"] = replicas
    if timeout_ms is not None:
        data["timeout_ms"] = timeout_ms
    if num_threads is not None:
        data["num_threads"] = num_threads
    if cache_mb:
        data["cache"] = {"enabled": True, "max_bytes": int(cache_mb * 1024 * 1024)}
    if cpus is not None:
        data["cpus"] = cpus
    if memory_mb is not None:
        data["memory_mb"] = memory_mb
    return parse_config({"deployments": [data]}).deployments[0]


def _llm_deployment_flags(
    name: str | None,
    model_arg: str,
    replicas: int | None,
    timeout_ms: float | None,
    num_threads: int | None,
) -> DeploymentConfig:
    """An LLM deployment config for ``serve smollm2`` or ``serve path/to/model.gguf``: a
    llama.cpp engine with the engine defaults. The model file is located now, so a missing
    or wrong one is one line and exit 1 before anything is bound."""
    engine: dict[str, Any] = {"kind": "llamacpp", "model": model_arg}
    if num_threads is not None:
        engine["threads"] = num_threads
    served = served_name_of(model_arg)
    data: dict[str, Any] = {"name": name or served, "model": served, "engine": engine}
    if replicas is not None:
        data["replicas"] = replicas
    if timeout_ms is not None:
        data["timeout_ms"] = timeout_ms
    config = parse_config({"deployments": [data]}).deployments[0]
    assert config.engine is not None
    config.engine.to_spec(config.name)
    return config


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="Registered model, 'minilm', pkg.module:Class, or a model file; an LLM: "
            "'smollm2' or a GGUF file (*.gguf)."
        ),
    ] = "minilm",
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to bind; 0 picks a free one [default: 8000].")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Deployment name [default: the model's name].")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Version or alias [default: newest].")] = None,
    replicas: Annotated[int | None, typer.Option(help="Replica processes [default: 1].")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Largest batch [default: 64].")] = None,
    max_batch_delay_ms: Annotated[
        float | None, typer.Option(help="Longest wait for a batch to fill [default: 10].")
    ] = None,
    timeout_ms: Annotated[
        float | None, typer.Option(help="Per-request deadline [default: 30000].")
    ] = None,
    num_threads: Annotated[
        int | None, typer.Option(help="Torch threads per replica [default: cores / replicas].")
    ] = None,
    cache_mb: Annotated[
        float | None, typer.Option(help="Response cache size in MiB [default: off].")
    ] = None,
    max_items_per_request: Annotated[
        int | None,
        typer.Option(help="Most items one request may carry; more is refused with 413 "
                     "[default: 1024, and at most the queue bound].")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="aiscale.yaml with server and deployments.")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Run without API keys while none exists, even on a non-loopback address.",
        ),
    ] = False,
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-hosts",
            help="Host name clients may use besides the bound address and localhost "
            "(repeatable; '*': any) [default: none].",
        ),
    ] = None,
    cors_origins: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origins",
            help="Browser origin (https://app.example.com) allowed to call the inference API "
            "cross-site (repeatable) [default: none].",
        ),
    ] = None,
    capture: Annotated[
        bool | None,
        typer.Option(
            "--capture/--no-capture",
            help="Capture every request and feedback durably [default: on].",
        ),
    ] = None,
    capture_sample_rate: Annotated[
        float | None, typer.Option(help="Fraction of requests captured, 0..1 [default: 1].")
    ] = None,
    nats_url: Annotated[
        str | None,
        typer.Option(help="Publish capture to this NATS JetStream server (several gateways)."),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Share rate limits and the response cache through Redis (several "
                     "gateways) [default: in process]."),
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="Where replicas run: 'local' processes or 'ray' actors [default: local]."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join (head host:port, or 'auto') with --runtime ray "
            "[default: a one-node Ray in this process]."
        ),
    ] = None,
    cpus: Annotated[
        float | None, typer.Option(help="Ray runtime: CPUs per replica [default: threads].")
    ] = None,
    memory_mb: Annotated[
        int | None, typer.Option(help="Ray runtime: memory per replica in MiB [default: none].")
    ] = None,
    otel_endpoint: Annotated[
        str | None,
        typer.Option(
            "--otel-endpoint",
            help="Send OpenTelemetry traces to this OTLP/HTTP collector (http://host:4318); "
            "needs aiscale[otel] [default: AISCALE_OTEL_ENDPOINT, else off].",
        ),
    ] = None,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Serve MODEL (default: the bundled minilm) over OIP v2 and OpenAI-compatible HTTP."""
    from aiscale.serving.app import GatewayApp
    from aiscale.serving.launch import build_gateway, ensure_registered
    from aiscale.serving.server import (
        ConnectionLimits,
        bind_socket,
        is_loopback,
        make_uvicorn,
        url_of,
    )

    with reported_errors():
        paths = resolve_paths(data_dir, registry_url)
        config = load_config(
            config_file,
            server_overrides={
                "host": host,
                "port": port,
                "insecure": insecure or None,
                "data_dir": str(paths.data_dir),
                "registry_url": paths.registry_url,
                "redis_url": redis_url,
                "max_items_per_request": max_items_per_request,
                "allowed_hosts": allowed_hosts or None,
                "cors_origins": cors_origins or None,
                "runtime": runtime,
                "ray_address": ray_address,
                "capture": {
                    "enabled": capture,
                    "sample_rate": capture_sample_rate,
                    "nats_url": nats_url,
                },
                "tracing": {"endpoint": otel_endpoint},
            },
        )
        if config.server.runtime == "ray":
            from aiscale.replicas.ray_pool import connect

            # Join now, in the main thread: a bad address is one line and exit 1, before
            # anything is registered or bound.
            connect(config.server.ray_address)
        # Everything the server writes (registry, artifacts, capture, secrets, reports) is
        # for its owner only; the umask covers what libraries create (Parquet, SQLite WAL).
        os.umask(0o077)
        make_private_data_dir(paths.data_dir)
        registry = SqlRegistry.open(paths.registry_url)
        artifacts = open_artifacts(paths)
        if is_llm_model_arg(model):
            flags = _llm_deployment_flags(name, model, replicas, timeout_ms, num_threads)
        else:
            choice = ensure_registered(registry, artifacts, model)
            flags = _deployment_flags(
                name or choice.model,
                choice.model,
                version or choice.version,
                replicas,
                max_batch_size,
                max_batch_delay_ms,
                timeout_ms,
                num_threads,
                cache_mb,
                cpus,
                memory_mb,
            )
        server = config.server
        if not is_loopback(server.host) and not registry.active_keys() and not server.is_insecure:
            raise InvalidInput(
                f"refusing to serve on {server.host} without API keys: create one with "
                "'aiscale keys create' or pass --insecure",
                field="host",
            )
        gateway = build_gateway(config, registry, artifacts, [flags])
        sock = bind_socket(server.host, server.port)
    url = url_of(sock)
    console = Console(soft_wrap=True)

    startup = _StartupErrors()

    def announce() -> None:
        startup.is_started = True
        names = ", ".join(gateway.deployments)
        console.print(f"aiscale serving on {url} (deployments: {names})", highlight=False)
        console.print(
            f"  dashboard: {url}/dashboard   metrics: {url}/metrics   OpenAI: {url}/v1   "
            f"OIP v2: {url}/v2",
            highlight=False,
        )
        console.file.flush()

    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(startup)
    try:
        make_uvicorn(
            GatewayApp(gateway, on_ready=announce),
            graceful_timeout_s=server.drain_timeout_s,
            limits=ConnectionLimits.of(server),
        ).run(sockets=[sock])
    except SystemExit:  # uvicorn exits 3 when the app's startup failed
        if startup.is_started:
            raise
    finally:
        uvicorn_log.removeFilter(startup)
        registry.close()
    if not startup.is_started:
        raise typer.Exit(1)  # the gateway said why, once ("gateway failed to start: ...")


class _StartupErrors(logging.Filter):
    """Drops uvicorn's echo of a failed start (the cause again, then "Application startup
    failed"): the gateway has already reported the cause in one line."""

    def __init__(self) -> None:
        super().__init__()
        self.is_started = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.is_started or record.levelno < logging.ERROR


def _print_deployment(info: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(info))
        return
    replicas = info["replicas"]
    _stdout().print(
        f"{info['name']}: model {info['model']} version {info['version']} ({info['runtime']}), "
        f"replicas ready {replicas['ready']} / wanted {replicas['wanted']}, "
        f"queue {info['queue_depth']}",
        highlight=False,
    )


@app.command()
def deploy(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    model: Annotated[str, typer.Option(help="Registered model name.")],
    version: Annotated[str | None, typer.Option(help="Version or alias [default: newest].")] = None,
    replicas: Annotated[int | None, typer.Option(help="Replica processes.")] = None,
    max_batch_size: Annotated[int | None, typer.Option()] = None,
    max_batch_delay_ms: Annotated[float | None, typer.Option()] = None,
    timeout_ms: Annotated[float | None, typer.Option()] = None,
    num_threads: Annotated[int | None, typer.Option()] = None,
    cache_mb: Annotated[float | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the deployment as JSON.")] = False,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
) -> None:
    """Create or replace a deployment on a running server (zero downtime)."""
    with reported_errors():
        config = _deployment_flags(
            name,
            model,
            version,
            replicas,
            max_batch_size,
            max_batch_delay_ms,
            timeout_ms,
            num_threads,
            cache_mb,
        )
        body = config.model_dump(mode="json", by_alias=True)
        info = _admin_call("POST", url, "/admin/deployments", key, body)
    _print_deployment(info, as_json)


@app.command()
def scale(
    deployment: Annotated[str, typer.Argument(help="Deployment name.")],
    replicas: Annotated[int, typer.Argument(help="Wanted number of replicas.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the deployment as JSON.")] = False,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
) -> None:
    """Change the replica count of a running deployment without failing a request."""
    with reported_errors():
        if replicas < 0:
            raise InvalidInput("replicas must be >= 0", field="replicas")
        info = _admin_call(
            "POST", url, f"/admin/deployments/{deployment}/scale", key, {"replicas": replicas}
        )
    _print_deployment(info, as_json)


@app.command()
def bench(
    url: Annotated[
        str, typer.Argument(help="Endpoint to load, e.g. http://127.0.0.1:8000/v1/embeddings "
                            "(with --chat: a server's base URL, its /v1, or its "
                            "/v1/chat/completions).")
    ],
    chat: Annotated[
        bool, typer.Option("--chat", help="Stream chat completions from an OpenAI-compatible "
                           "server; report TTFT, ITL, tokens/s and goodput.")
    ] = False,
    concurrency: Annotated[
        int, typer.Option(help="Closed loop: clients each waiting for their answer "
                          "(with --turns: simultaneous users).")
    ] = 1,
    rate: Annotated[
        float | None, typer.Option(help="Open loop: Poisson arrivals per second.")
    ] = None,
    trace: Annotated[
        Path | None, typer.Option(help="Open loop: replay a CSV trace's TIMESTAMP column "
                                  "(with --chat also ContextTokens and GeneratedTokens).")
    ] = None,
    rate_scale: Annotated[float, typer.Option(help="Multiply the trace's arrival rate.")] = 1.0,
    time_scale: Annotated[float, typer.Option(help="Stretch the trace's time axis.")] = 1.0,
    requests: Annotated[
        int | None, typer.Option(help="Stop after this many counted requests.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (after warm-up).")
    ] = None,
    warmup: Annotated[float, typer.Option(help="Seconds of requests sent but not counted.")] = 0.0,
    body: Annotated[
        str | None, typer.Option(help="Request body (JSON); default: derived from the URL.")
    ] = None,
    body_file: Annotated[Path | None, typer.Option(help="File holding the request body.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Deployment named in derived bodies [default: minilm; "
                                 "--chat: the one model the server lists].")
    ] = None,
    header: Annotated[
        list[str] | None, typer.Option(help="Extra header 'Name: value' (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for arrivals and sentences.")] = 0,
    timeout: Annotated[
        float | None, typer.Option(help="Per-request timeout in seconds [default: 30; --chat: "
                                   "60, for each wait on the stream].")
    ] = None,
    max_outstanding: Annotated[
        int, typer.Option(help="Open loop: cap on requests in flight.")
    ] = 1024,
    max_tokens: Annotated[
        int | None, typer.Option(help="--chat: output tokens per request; caps a trace's "
                                 "GeneratedTokens [default: 64].")
    ] = None,
    prompt_tokens: Annotated[
        int | None, typer.Option(help="--chat: prompt tokens per request, or per user turn "
                                 "with --turns [default: 128].")
    ] = None,
    ignore_eos: Annotated[
        bool | None, typer.Option("--ignore-eos/--no-ignore-eos",
                                  help="--chat: make the engine produce exactly the asked "
                                  "tokens (its ignore_eos) [default: on].")
    ] = None,
    turns: Annotated[
        int | None, typer.Option(help="--chat: multi-turn conversations of this many turns "
                                 "by --concurrency users, each turn resending the history.")
    ] = None,
    think_time: Annotated[
        float | None, typer.Option(help="--chat --turns: mean seconds a user thinks between "
                                   "turns [default: 1].")
    ] = None,
    system_tokens: Annotated[
        int | None, typer.Option(help="--chat --turns: a system prompt of this many tokens "
                                 "that all conversations share [default: 0].")
    ] = None,
    slo_ttft_ms: Annotated[
        float | None, typer.Option(help="--chat: goodput counts requests whose time to first "
                                   "token is at most this [default: 1000].")
    ] = None,
    slo_itl_ms: Annotated[
        float | None, typer.Option(help="--chat: ... and whose mean inter-token latency is at "
                                   "most this [default: 100].")
    ] = None,
    max_context: Annotated[
        int | None, typer.Option(help="--chat: the model's context window in tokens; longer "
                                 "prompts are shortened [default: from /v1/models, else 2048].")
    ] = None,
    calibrate: Annotated[
        bool | None, typer.Option("--calibrate/--no-calibrate",
                                  help="--chat: first measure the chat template's tokens with two "
                                  "probe requests [default: on].")
    ] = None,
    max_error_rate: Annotated[
        float,
        typer.Option(help="Exit 1 when more than this share of requests fail (0.01 = 1%)."),
    ] = 0.01,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
) -> None:
    """Load a running server (closed or open loop, or a trace) and report throughput and latency.

    With --chat: streamed chat completions (closed or open loop, a token trace, or multi-turn
    conversations with --turns) and TTFT, ITL, output tokens/s and goodput.
    Exits 1 when the server cannot be reached or too many requests fail (--max-error-rate)."""
    from aiscale.bench import bench_command, bench_progress, render_result
    from aiscale.bench.command import check_max_error_rate
    from aiscale.cli import chat_bench
    from aiscale.cli._common import _stderr

    with reported_errors():
        check_max_error_rate(max_error_rate)
        chat_bench.check_flags(chat, {
            "body": body, "body_file": body_file, "max_tokens": max_tokens,
            "prompt_tokens": prompt_tokens, "ignore_eos": ignore_eos, "turns": turns,
            "think_time": think_time, "system_tokens": system_tokens,
            "slo_ttft_ms": slo_ttft_ms, "slo_itl_ms": slo_itl_ms, "max_context": max_context,
            "calibrate": calibrate,
        })
        if chat:
            from aiscale.bench.chat_command import build_chat_config

            chat_config = build_chat_config(
                url, concurrency=concurrency, rate=rate, trace=trace, rate_scale=rate_scale,
                time_scale=time_scale, requests=requests, duration=duration, warmup=warmup,
                model=model, headers=header or (), seed=seed,
                timeout=60.0 if timeout is None else timeout, max_outstanding=max_outstanding,
                max_tokens=64 if max_tokens is None else max_tokens,
                prompt_tokens=128 if prompt_tokens is None else prompt_tokens,
                ignore_eos=ignore_eos is not False, turns=turns or 1,
                think_time=1.0 if think_time is None else think_time,
                system_tokens=system_tokens or 0,
                slo_ttft_ms=1000.0 if slo_ttft_ms is None else slo_ttft_ms,
                slo_itl_ms=100.0 if slo_itl_ms is None else slo_itl_ms,
                max_context=max_context,
                calibrate=calibrate is not False,
            )
    if chat:
        chat_bench.run_and_print(chat_config, as_json=as_json, max_error_rate=max_error_rate)
        return
    with reported_errors():
        console = Console(stderr=as_json)
        with bench_progress(console) as on_progress:
            result = bench_command(
                url,
                on_progress=on_progress,
                concurrency=concurrency,
                rate=rate,
                trace=trace,
                rate_scale=rate_scale,
                time_scale=time_scale,
                requests=requests,
                duration=duration,
                warmup=warmup,
                body=body,
                body_file=body_file,
                model=model or "minilm",
                headers=header or (),
                seed=seed,
                timeout=30.0 if timeout is None else timeout,
                max_outstanding=max_outstanding,
            )
    if as_json:
        print(json.dumps(result.to_json()))
    else:
        _stdout().print(render_result(result))
    failure = result.failure_reason(max_error_rate)
    if failure is not None:
        _stderr().print(f"error: {failure}")
        raise typer.Exit(1)


@app.command()
def detect(
    source: Annotated[Path, typer.Argument(help="CSV with timestamp,value columns.")],
    out: Annotated[
        Path, typer.Option("--out", help="Where to write timestamp,value,anomaly_score.")
    ],
) -> None:
    """Score every point of a metric series for anomalies (the live monitor's detector).

    Rows with a missing or non-numeric value keep their place with an empty score; timestamps
    that step back or repeat are scored in arrival order. Each kind is reported on stderr.
    """
    from aiscale.cli._common import _stderr
    from aiscale.monitor import detect_csv

    with reported_errors():
        report = detect_csv(source, out)
    for warning in report.warnings():
        _stderr().print(f"warning: {warning}")
    skipped = report.num_rows - report.num_scored
    _stdout().print(f"scored {report.num_scored} of {report.num_rows} rows into {out}"
                    + (f" ({skipped} skipped, score left empty)" if skipped else ""),
                    highlight=False)


@app.command()
def demo(
    duration: Annotated[
        float, typer.Option(help="Seconds of load, split over the ramp's stages.")
    ] = 40.0,
    users: Annotated[
        int | None, typer.Option(help="Simulated users at the top of the ramp "
                                 "[default: 64; --llm: 8].")
    ] = None,
    llm: Annotated[
        bool, typer.Option("--llm", help="Serve the bundled SmolLM2 on llama.cpp instead, "
                           "with simulated users chatting (multi-turn, streamed).")
    ] = False,
    replicas: Annotated[int, typer.Option(help="Replica processes of minilm.")] = 1,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Keep state here [default: a temporary folder]."),
    ] = None,
    open_browser: Annotated[
        bool,
        typer.Option("--open-browser/--no-browser",
                     help="Open the dashboard in a browser when a graphical one is available."),
    ] = True,
) -> None:
    """Serve the bundled minilm and drive a ramp of simulated users at it, with a live view
    and the live dashboard (its URL is printed; opened in a browser where one can be shown).
    With --llm: the bundled SmolLM2 and users chatting, with the dashboard's LLM panel."""
    if llm:
        from aiscale.demo_llm import run_llm_demo

        with reported_errors():
            if replicas != 1:
                raise InvalidInput("--replicas applies to the minilm demo only", field="replicas")
            llm_summary = run_llm_demo(
                data_dir=data_dir,
                duration_s=duration,
                max_users=8 if users is None else users,
                console=Console(),
                open_browser=open_browser,
            )
        if llm_summary.is_interrupted:
            raise typer.Exit(130)
        return
    from aiscale.demo import run_demo

    with reported_errors():
        summary = run_demo(
            data_dir=data_dir,
            duration_s=duration,
            max_users=64 if users is None else users,
            replicas=replicas,
            console=Console(),
            open_browser=open_browser,
        )
    if summary.is_interrupted:
        raise typer.Exit(130)
