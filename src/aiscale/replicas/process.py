"""The replica process: loads one model version and answers batches over a socket.

Started by ``LocalProcessBackend`` (``local.py``) as ``python -m aiscale.replicas.process``;
the socket is inherited as a file descriptor. Model code runs only here, so a model that
crashes, hangs or leaks takes down this process, never the gateway. Every exception from the
model is sent back with its type name; this process never decides HTTP status codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiscale.replicas.ipc import (
    BatchReply,
    BatchRequest,
    LoadFailedMessage,
    ReadyMessage,
    StopMessage,
    encode,
    recv_message,
)

if TYPE_CHECKING:
    from aiscale.replicas.tracing import ModelSpans

logger = logging.getLogger(__name__)


def _output_count(outputs: Any) -> int:
    shape = getattr(outputs, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else 0
    return len(outputs)


def _normalise_outputs(outputs: Any) -> Any:
    """Keep numpy arrays as they are (cheap to pickle); turn other sequences into lists."""
    if hasattr(outputs, "shape"):
        return outputs
    return list(outputs)


def serve_batches(
    sock: socket.socket,
    runtime: str,
    uri: str,
    config: dict[str, Any],
    spans: ModelSpans | None = None,
) -> int:
    """Load the model, announce readiness, then answer batches until told to stop; with
    ``spans``, a batch that carries a trace context runs inside a model span."""
    started = time.monotonic()
    try:
        from aiscale.runtimes import load_model

        model = load_model(runtime, uri, config)
        model.load()
    except Exception as exc:  # the load boundary: report whatever failed, then exit
        from aiscale.errors import AiscaleError

        if isinstance(exc, AiscaleError):
            # A known cause (e.g. the module does not import), already one clear message:
            # the gateway reports it once; a traceback here would only repeat it.
            logger.debug("model %s (%s) failed to load: %s", uri, runtime, exc)
        else:
            logger.exception("model %s (%s) failed to load", uri, runtime)
        sock.sendall(encode(LoadFailedMessage(type(exc).__name__, str(exc))))
        return 1
    sock.sendall(
        encode(ReadyMessage(os.getpid(), model.schema.to_json(), time.monotonic() - started))
    )

    while True:
        message = recv_message(sock)
        if message is None or isinstance(message, StopMessage):
            return 0
        if not isinstance(message, BatchRequest):
            logger.error("unexpected message %r", type(message).__name__)
            continue
        sock.sendall(encode(_run_batch(model.predict, message, spans)))


def _run_batch(
    predict: Any, request: BatchRequest, spans: ModelSpans | None = None
) -> BatchReply:
    if spans is not None and request.trace_context is not None:
        return spans.run(
            request.trace_context, len(request.items), lambda: _predict_batch(predict, request)
        )
    return _predict_batch(predict, request)


def _predict_batch(predict: Any, request: BatchRequest) -> BatchReply:
    started = time.perf_counter()
    try:
        outputs = predict(request.items)
        count = _output_count(outputs)
        if count != len(request.items):
            return BatchReply(
                request.batch_id,
                error_type="OutputCountMismatch",
                error_message=f"model returned {count} outputs for {len(request.items)} inputs",
            )
        return BatchReply(
            request.batch_id, _normalise_outputs(outputs), model_s=time.perf_counter() - started
        )
    except Exception as exc:  # the batch boundary: every caller in the batch gets this error
        return BatchReply(request.batch_id, error_type=type(exc).__name__, error_message=str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aiscale replica process (started by the gateway)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--config", default="{}")
    parser.add_argument("--tracing", default=None, help="TraceExport as JSON; absent: off")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s replica %(process)d %(message)s")
    # The gateway owns shutdown: a Ctrl-C in the terminal reaches the whole process group,
    # and the replica must keep answering until the gateway has drained it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    spans: ModelSpans | None = None
    if args.tracing is not None:
        # Imported only here: a replica of a server with tracing off never loads OpenTelemetry.
        from aiscale.replicas.tracing import ModelSpans, TraceExport

        spans = ModelSpans(TraceExport.from_json(args.tracing), runtime=args.runtime, uri=args.uri)
    try:
        return serve_batches(sock, args.runtime, args.uri, json.loads(args.config), spans)
    finally:
        sock.close()
        if spans is not None:
            spans.shutdown()


if __name__ == "__main__":
    # A process entry point like cli.py: the exit status tells the gateway how the replica ended.
    sys.exit(main())
