"""The ``aiscale`` command: one Typer app whose subcommands are thin calls into the parts.

Every command turns an ``AiscaleError`` (or an OS error) into one line on stderr and exit
status 1; usage errors exit 2. This is the only module that prints or exits the process.

Settings: ``--data-dir`` (env ``AISCALE_DATA_DIR``, else ``~/.aiscale``) holds the SQLite
registry ``registry.db`` and the artifact store ``artifacts/``; ``--registry-url`` (env
``AISCALE_REGISTRY_URL``) points the registry at another database, e.g. PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aiscale.config import DeploymentConfig, load_config, parse_config
from aiscale.errors import AiscaleError, InvalidInput
from aiscale.registry import FsspecArtifactStore, SqlRegistry, register_with_artifact

app = typer.Typer(
    name="aiscale",
    help="Serve AI models fast, release them safely, scale them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
models_app = typer.Typer(
    help="Register and inspect models, versions and aliases.", no_args_is_help=True
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")


def main() -> None:
    """Entry point of the ``aiscale`` script."""
    app()


# --------------------------------------------------------------- shared settings

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="AISCALE_DATA_DIR",
        help="Folder for the registry and artifacts [default: ~/.aiscale].",
    ),
]
RegistryUrlOption = Annotated[
    str | None,
    typer.Option(
        "--registry-url",
        envvar="AISCALE_REGISTRY_URL",
        help="SQLAlchemy URL of the registry [default: sqlite:///<data-dir>/registry.db].",
    ),
]


@dataclass(frozen=True, slots=True)
class CliPaths:
    """Where the CLI keeps its state, resolved from flags, environment and defaults."""

    data_dir: Path
    registry_url: str

    @property
    def artifacts_root(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


def resolve_paths(data_dir: Path | None, registry_url: str | None) -> CliPaths:
    """Apply the defaults: ``~/.aiscale`` and a SQLite file inside it."""
    folder = (data_dir or Path.home() / ".aiscale").expanduser().resolve()
    return CliPaths(data_dir=folder, registry_url=registry_url or f"sqlite:///{folder}/registry.db")


@contextmanager
def open_registry(paths: CliPaths) -> Iterator[SqlRegistry]:
    """The registry for one command, closed when the command ends."""
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    registry = SqlRegistry.open(paths.registry_url)
    try:
        yield registry
    finally:
        registry.close()


def open_artifacts(paths: CliPaths) -> FsspecArtifactStore:
    return FsspecArtifactStore(paths.artifacts_root, cache_dir=paths.cache_dir)


def _stdout() -> Console:
    return Console()


def _stderr() -> Console:
    # One line per error, however narrow the terminal: soft wrap, no markup or highlighting.
    return Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn expected failures into one clear line on stderr and exit status 1."""
    try:
        yield
    except AiscaleError as exc:
        where = f" [{exc.field}]" if exc.field else ""
        _stderr().print(f"error: {exc.message}{where}")
        raise typer.Exit(1) from None
    except OSError as exc:
        _stderr().print(f"error: {exc}")
        raise typer.Exit(1) from None


def _json_option(text: str | None, field: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--{field} is not valid JSON: {exc.msg}", field=field) from None
    if not isinstance(value, dict):
        raise InvalidInput(f"--{field} must be a JSON object", field=field)
    return value


def _when(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------ models


class RuntimeName(StrEnum):
    """How a version is loaded (see aiscale.runtimes)."""

    python = "python"
    sklearn = "sklearn"
    onnx = "onnx"
    sentence_transformers = "sentence-transformers"
    minilm = "minilm"


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    runtime: Annotated[RuntimeName, typer.Option("--runtime", help="How the model is loaded.")],
    uri: Annotated[
        str | None,
        typer.Option(
            "--uri", help="pkg.module:Class, a model file or folder [minilm default: bundled]."
        ),
    ] = None,
    config: Annotated[str | None, typer.Option("--config", help="Runtime config, JSON.")] = None,
    metadata: Annotated[str | None, typer.Option("--metadata", help="Free metadata, JSON.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="[default: next number]")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="Point this alias at it.")] = None,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Register a new version; model files and folders are copied into the artifact store."""
    with reported_errors():
        if uri is None:
            if runtime is not RuntimeName.minilm:
                raise InvalidInput(
                    f"--uri is required for the {runtime.value} runtime", field="uri"
                )
            uri = "bundled"
        paths = resolve_paths(data_dir, registry_url)
        parsed_config = _json_option(config, "config")
        parsed_metadata = _json_option(metadata, "metadata")
        with open_registry(paths) as registry:
            record = register_with_artifact(
                registry,
                open_artifacts(paths),
                name,
                runtime=runtime.value,
                uri=uri,
                config=parsed_config,
                metadata=parsed_metadata,
                version=version,
                alias=alias,
            )
        out = _stdout()
        out.print(
            f"registered {record.model} version {record.version} ({record.runtime})",
            markup=False,
            highlight=False,
        )
        out.print(f"uri: {record.uri}", markup=False, highlight=False, soft_wrap=True)
        if record.artifact_digest:
            out.print(f"digest: sha256:{record.artifact_digest}", markup=False, soft_wrap=True)
        if alias:
            out.print(f"alias {alias} -> {record.version}", markup=False, highlight=False)


@models_app.command("list")
def models_list(data_dir: DataDirOption = None, registry_url: RegistryUrlOption = None) -> None:
    """List models with their latest version and aliases."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        table = Table("model", "versions", "latest", "aliases", "description")
        for model in registry.list_models():
            versions = registry.list_versions(model.name)
            aliases = registry.list_aliases(model.name)
            table.add_row(
                model.name,
                str(len(versions)),
                versions[-1].version if versions else "",
                ", ".join(f"{a}->{v}" for a, v in aliases.items()),
                model.description,
            )
        _stdout().print(table)


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Show a model's versions and aliases."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        versions = registry.list_versions(name)
        aliases = registry.list_aliases(name)
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        table = Table(
            "version", "runtime", "uri", "digest", "created (UTC)", "aliases", title=f"model {name}"
        )
        for record in versions:
            table.add_row(
                record.version,
                record.runtime,
                record.uri,
                (record.artifact_digest or "")[:12],
                _when(record.created_at),
                ", ".join(by_version.get(record.version, [])),
            )
        alias_table = Table("alias", "version", title="aliases")
        for alias, version in aliases.items():
            alias_table.add_row(alias, version)
        out = _stdout()
        out.print(table)
        out.print(alias_table)


@models_app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias to set or move.")],
    version: Annotated[str, typer.Argument(help="Version it points at.")],
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Point ALIAS of model NAME at VERSION (moving it if it exists)."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        registry.set_alias(name, alias, version)
        _stdout().print(f"{name}: alias {alias} -> {version}", markup=False, highlight=False)


# -------------------------------------------------------------------------- keys


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    scope: Annotated[
        list[str], typer.Option("--scope", help="admin and/or inference; repeat the option.")
    ],
    rate_limit: Annotated[
        float | None, typer.Option("--rate-limit", help="Requests per second for this key.")
    ] = None,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        plaintext, record = registry.create_key(name, frozenset(scope), rate_limit)
        out = _stdout()
        out.print(
            f"key id: {record.key_id}  scopes: {','.join(sorted(record.scopes))}",
            markup=False,
            highlight=False,
        )
        out.print("API key (shown once, store it now):", markup=False, highlight=False)
        out.print(plaintext, markup=False, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(data_dir: DataDirOption = None, registry_url: RegistryUrlOption = None) -> None:
    """List API keys (never their plaintext)."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        table = Table("key id", "name", "scopes", "rate/s", "created (UTC)", "revoked (UTC)")
        for key in registry.list_keys():
            table.add_row(
                key.key_id,
                key.name,
                ",".join(sorted(key.scopes)),
                "" if key.rate_limit_per_s is None else f"{key.rate_limit_per_s:g}",
                _when(key.created_at),
                _when(key.revoked_at),
            )
        _stdout().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by `keys list`.")],
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Revoke an API key; a running gateway refuses it once it reloads its keys."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        record = registry.revoke_key(key_id)
        _stdout().print(f"revoked {record.key_id} ({record.name})", markup=False, highlight=False)


# --------------------------------------------------------------- serving

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="AISCALE_URL", help="Base URL of a running aiscale server."),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar="AISCALE_API_KEY", help="API key with the admin scope."),
]


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
    return parse_config({"deployments": [data]}).deployments[0]


@app.command()
def serve(
    model: Annotated[
        str, typer.Argument(help="Registered model, 'minilm', pkg.module:Class, or a model file.")
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
    config_file: Annotated[
        Path | None, typer.Option("--config", help="aiscale.yaml with server and deployments.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback address without API keys.")
    ] = False,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Serve MODEL (default: the bundled minilm) over OIP v2 and OpenAI-compatible HTTP."""
    from aiscale.serving.app import GatewayApp
    from aiscale.serving.launch import build_gateway, ensure_registered
    from aiscale.serving.server import bind_socket, is_loopback, make_uvicorn, url_of

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
            },
        )
        paths.data_dir.mkdir(parents=True, exist_ok=True)
        registry = SqlRegistry.open(paths.registry_url)
        artifacts = open_artifacts(paths)
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

    def announce() -> None:
        names = ", ".join(gateway.deployments)
        console.print(f"aiscale serving on {url} (deployments: {names})", highlight=False)
        console.print(
            f"  metrics: {url}/metrics   OpenAI: {url}/v1   OIP v2: {url}/v2", highlight=False
        )
        console.file.flush()

    try:
        make_uvicorn(
            GatewayApp(gateway, on_ready=announce), graceful_timeout_s=server.drain_timeout_s
        ).run(sockets=[sock])
    finally:
        registry.close()


def _admin_call(method: str, url: str, path: str, key: str | None, body: Any = None) -> Any:
    import httpx

    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(
            method, f"{url.rstrip('/')}{path}", json=body, headers=headers, timeout=300
        )
    except httpx.TransportError as exc:
        raise AiscaleError(f"cannot reach {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message, field = error["message"], error.get("field")
        except (ValueError, KeyError, TypeError):
            message, field = response.text[:200], None
        raise AiscaleError(f"server answered {response.status_code}: {message}", field=field)
    return response.json()


def _print_deployment(info: dict[str, Any]) -> None:
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
        _print_deployment(_admin_call("POST", url, "/admin/deployments", key, body))


@app.command()
def scale(
    deployment: Annotated[str, typer.Argument(help="Deployment name.")],
    replicas: Annotated[int, typer.Argument(help="Wanted number of replicas.")],
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
        _print_deployment(info)


@app.command()
def bench(
    url: Annotated[
        str, typer.Argument(help="Endpoint to load, e.g. http://127.0.0.1:8000/v1/embeddings.")
    ],
    concurrency: Annotated[
        int, typer.Option(help="Closed loop: clients each waiting for their answer.")
    ] = 1,
    rate: Annotated[
        float | None, typer.Option(help="Open loop: Poisson arrivals per second.")
    ] = None,
    trace: Annotated[
        Path | None, typer.Option(help="Open loop: replay a CSV trace's TIMESTAMP column.")
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
    model: Annotated[str, typer.Option(help="Deployment named in derived bodies.")] = "minilm",
    header: Annotated[
        list[str] | None, typer.Option(help="Extra header 'Name: value' (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for arrivals and sentences.")] = 0,
    timeout: Annotated[float, typer.Option(help="Per-request timeout in seconds.")] = 30.0,
    max_outstanding: Annotated[
        int, typer.Option(help="Open loop: cap on requests in flight.")
    ] = 1024,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
) -> None:
    """Load a running server (closed or open loop, or a trace) and report throughput and latency."""
    from aiscale.bench import bench_command, bench_progress, render_result

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
                model=model,
                headers=header or (),
                seed=seed,
                timeout=timeout,
                max_outstanding=max_outstanding,
            )
    if as_json:
        print(json.dumps(result.to_json()))
    else:
        _stdout().print(render_result(result))


@app.command()
def detect(
    source: Annotated[Path, typer.Argument(help="CSV with timestamp,value columns.")],
    out: Annotated[
        Path, typer.Option("--out", help="Where to write timestamp,value,anomaly_score.")
    ],
) -> None:
    """Score every point of a metric series for anomalies (the live monitor's detector)."""
    from aiscale.monitor import detect_csv

    with reported_errors():
        rows = detect_csv(source, out)
    _stdout().print(f"scored {rows} rows into {out}", highlight=False)


@app.command()
def demo(
    duration: Annotated[
        float, typer.Option(help="Seconds of load, split over the ramp's stages.")
    ] = 40.0,
    users: Annotated[int, typer.Option(help="Simulated users at the top of the ramp.")] = 64,
    replicas: Annotated[int, typer.Option(help="Replica processes of minilm.")] = 1,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Keep state here [default: a temporary folder]."),
    ] = None,
) -> None:
    """Serve the bundled minilm and drive a ramp of simulated users at it, with a live view."""
    from aiscale.demo import run_demo

    with reported_errors():
        summary = run_demo(
            data_dir=data_dir,
            duration_s=duration,
            max_users=users,
            replicas=replicas,
            console=Console(),
        )
    if summary.is_interrupted:
        raise typer.Exit(130)


# --------------------------------------------------------------- releases

rollout_app = typer.Typer(
    help="Progressive rollouts: canary steps judged by statistics.", no_args_is_help=True
)
app.add_typer(rollout_app, name="rollout")


def _print_rollout(info: dict[str, Any]) -> None:
    console = _stdout()
    console.print(
        f"{info['deployment']}: {info['baseline']} -> {info['canary']} {info['status']} at step "
        f"{info['step_index']} ({info['canary_percent']:g}% canary of {info['steps']})",
        highlight=False,
    )
    if info.get("reason"):
        console.print(f"  reason: {info['reason']}", highlight=False, soft_wrap=True)
    table = Table("version", "requests", "errors", "p50 ms", "p99 ms")
    for version, counts in info.get("versions", {}).items():
        latency = counts["latency_ms"]
        table.add_row(
            version,
            str(counts["num_requests"]),
            str(counts["num_errors"]),
            "-" if latency["p50"] is None else f"{latency['p50']:.1f}",
            "-" if latency["p99"] is None else f"{latency['p99']:.1f}",
        )
    console.print(table)
    decision = info.get("last_decision")
    if decision:
        tests = Table("test", "method", "baseline", "canary", "p-value", "worse")
        for test in decision["tests"]:
            tests.add_row(
                test["name"],
                test["method"],
                f"{test['baseline']:.4g}",
                f"{test['canary']:.4g}",
                f"{test['p_value']:.3g}",
                "yes" if test["is_worse"] else "no",
            )
        console.print(f"last decision: {decision['verdict']}", highlight=False)
        console.print(tests)


@rollout_app.command("start")
def rollout_start(
    deployment: Annotated[str, typer.Argument(help="Deployment to roll out.")],
    version: Annotated[str, typer.Argument(help="Canary version (or alias).")],
    steps: Annotated[str, typer.Option(help="Canary percents, ending at 100.")] = "1,5,25,50,100",
    interval_s: Annotated[float, typer.Option("--interval", help="Seconds between looks.")] = 5.0,
    min_step_s: Annotated[float, typer.Option("--min-step", help="Least seconds per step.")] = 30.0,
    min_requests: Annotated[
        int, typer.Option(help="Requests per version before any verdict.")
    ] = 500,
    alpha: Annotated[float, typer.Option(help="Bound on the false rollback rate.")] = 0.05,
    shadow: Annotated[
        float, typer.Option(help="Share of traffic also mirrored to the canary.")
    ] = 0.0,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
) -> None:
    """Warm the canary's replicas, then move traffic to it step by step."""
    from aiscale.rollout.controller import steps_from_text

    with reported_errors():
        body = {
            "version": version,
            "steps": list(steps_from_text(steps)),
            "interval_s": interval_s,
            "min_step_duration_s": min_step_s,
            "min_requests": min_requests,
            "alpha": alpha,
            "shadow_fraction": shadow,
        }
        _print_rollout(
            _admin_call("POST", url, f"/admin/deployments/{deployment}/rollout", key, body)
        )


@rollout_app.command("status")
def rollout_status(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Where the rollout is, the last decision with its numbers, and per-version counts."""
    with reported_errors():
        _print_rollout(_admin_call("GET", url, f"/admin/deployments/{deployment}/rollout", key))


def _rollout_action(action: str, deployment: str, url: str, key: str | None) -> None:
    with reported_errors():
        _print_rollout(
            _admin_call("POST", url, f"/admin/deployments/{deployment}/rollout/{action}", key)
        )


@rollout_app.command("pause")
def rollout_pause(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Hold the current split; no step is taken until resume."""
    _rollout_action("pause", deployment, url, key)


@rollout_app.command("resume")
def rollout_resume(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Continue a paused rollout."""
    _rollout_action("resume", deployment, url, key)


@rollout_app.command("promote")
def rollout_promote(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Give the canary all traffic now and end the rollout."""
    _rollout_action("promote", deployment, url, key)


@rollout_app.command("abort")
def rollout_abort(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Send all traffic back to the baseline and end the rollout."""
    _rollout_action("abort", deployment, url, key)


@rollout_app.command("history")
def rollout_history(
    deployment: str,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Rollouts, their decisions, and which version served which share when (from the registry)."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        from aiscale.serving.control import rollout_history as history_of

        history = history_of(registry, deployment)
    console = _stdout()
    table = Table("at (UTC)", "split", "cause")
    for entry in history["traffic"]:
        table.add_row(entry["at"], json.dumps(entry["split"]["weights"]), entry["cause"])
    console.print(table)
    decisions = Table("rollout", "at (UTC)", "step", "verdict", "reason")
    for rollout in history["rollouts"]:
        for decision in rollout["decisions"]:
            decisions.add_row(
                str(rollout["rollout_id"]),
                decision["at"],
                str(decision["step_index"]),
                decision["verdict"],
                decision["reason"][:120],
            )
    console.print(decisions)


@app.command()
def rollback(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Back to the previous version at once (aborts a rollout in progress)."""
    with reported_errors():
        info = _admin_call("POST", url, f"/admin/deployments/{deployment}/rollback", key)
    _stdout().print(f"{deployment} now serves version {info['version']}", highlight=False)


experiment_app = typer.Typer(
    help="A/B experiments between the versions a deployment serves.", no_args_is_help=True
)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("report")
def experiment_report(
    deployment: Annotated[str, typer.Argument(help="Deployment whose versions to compare.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for report.html/.md/.json and the plots.")
    ] = Path("experiment-report"),
    baseline: Annotated[
        str | None, typer.Option(help="Version to compare against [default: most traffic].")
    ] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
) -> None:
    """Per-version traffic, error rate and latency with intervals and tests, plus plots."""
    from aiscale.rollout.report import build_report, render_table, write_report

    with reported_errors():
        stats = _admin_call("GET", url, f"/admin/deployments/{deployment}/stats", key)
        report = build_report(stats, baseline=baseline)
        written = write_report(report, out)
    console = _stdout()
    console.print(render_table(report))
    console.print(f"written: {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------- capacity planning


@app.command()
def profile(
    model: Annotated[str, typer.Argument(help="'minilm' or an import path pkg.module:Class.")],
    out: Annotated[Path, typer.Option("--out", help="Profile JSON to write.")],
    hardware: Annotated[
        str | None, typer.Option(help="Catalog hardware to derive an estimate for.")
    ] = None,
    seconds_per_size: Annotated[float, typer.Option(help="Seconds measured per batch size.")] = 1.0,
) -> None:
    """Measure latency and throughput against batch size, and memory per replica, on this machine."""
    from aiscale.plan.commands import profile_command

    with reported_errors():
        result = profile_command(model, out, hardware=hardware, seconds_per_size=seconds_per_size)
    table = Table("batch size", "latency ms", "items/s")
    for size, latency_ms, rate in zip(
        result.batch_sizes, result.latency_ms, result.throughput_per_s, strict=True
    ):
        table.add_row(str(size), f"{latency_ms:.1f}", f"{rate:.1f}")
    _stdout().print(table)
    _stdout().print(f"written: {out}", highlight=False)


@app.command()
def simulate(
    profile_path: Annotated[
        Path, typer.Option("--profile", help="Model profile JSON (aiscale profile).")
    ],
    policy: Annotated[
        str, typer.Option(help="static, reactive, kpa, predictive or oracle.")
    ] = "predictive",
    slo_p99_ms: Annotated[float, typer.Option(help="Latency SLO: p99 under this many ms.")] = 500.0,
    trace: Annotated[Path | None, typer.Option(help="CSV trace with a TIMESTAMP column.")] = None,
    users: Annotated[int | None, typer.Option(help="Synthetic traffic: number of users.")] = None,
    requests_per_user: Annotated[
        float | None, typer.Option(help="Requests per user per day.")
    ] = None,
    shape: Annotated[str, typer.Option(help="flat, daily, weekly or bursty.")] = "daily",
    rate_scale: Annotated[float, typer.Option(help="Multiply the trace's arrival rate.")] = 1.0,
    time_scale: Annotated[float, typer.Option(help="Stretch the trace's time axis.")] = 1.0,
    duration: Annotated[float | None, typer.Option(help="Seconds to simulate.")] = None,
    mode: Annotated[str, typer.Option(help="exact, aggregated or auto.")] = "auto",
    replicas: Annotated[int | None, typer.Option(help="Replicas for the static policy.")] = None,
    hardware: Annotated[str | None, typer.Option(help="Catalog hardware.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Replay arrivals through queues, batching, replicas and a scaling policy, in simulated time."""
    from aiscale.plan.commands import simulate_command

    with reported_errors():
        result = simulate_command(
            profile=profile_path,
            policy=policy,
            slo_p99_ms=slo_p99_ms,
            trace=trace,
            users=users,
            requests_per_user=requests_per_user,
            shape=shape,
            rate_scale=rate_scale,
            time_scale=time_scale,
            duration_s=duration,
            mode=mode,
            replicas=replicas,
            hardware=hardware,
            seed=seed,
        )
    if as_json:
        print(json.dumps(result))
        return
    table = Table("field", "value")
    for name in (
        "requests",
        "p50_ms",
        "p99_ms",
        "slo_attainment",
        "replica_hours",
        "cost_usd",
        "mode",
    ):
        value = result.get(name)
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    _stdout().print(table)


@app.command()
def plan(
    users: Annotated[
        str, typer.Option(help="Phases as user counts, e.g. 10000,100000,500000,1000000.")
    ],
    requests_per_user: Annotated[float, typer.Option(help="Requests per user per day.")],
    profile_path: Annotated[
        Path, typer.Option("--profile", help="Model profile JSON (aiscale profile).")
    ],
    slo_p99_ms: Annotated[float, typer.Option(help="Latency SLO: p99 under this many ms.")] = 500.0,
    report: Annotated[
        Path | None, typer.Option(help="Folder for the HTML/Markdown report and plots.")
    ] = None,
    shape: Annotated[str, typer.Option(help="flat, daily, weekly or bursty.")] = "daily",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per phase: replicas, hardware, monthly cost and SLO attainment of each scaling strategy."""
    from rich.progress import Progress

    from aiscale.plan.commands import plan_command

    with reported_errors(), Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("simulating", total=None)

        def on_progress(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label)

        result = plan_command(
            users=users,
            requests_per_user=requests_per_user,
            slo_p99_ms=slo_p99_ms,
            profile=profile_path,
            report=report,
            shape=shape,
            on_progress=on_progress,
        )
    data = result.to_dict()
    if as_json:
        print(json.dumps(data))
        return
    _stdout().print_json(json.dumps(data)[:20000])
    if result.files:
        _stdout().print(f"report: {', '.join(result.files)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
