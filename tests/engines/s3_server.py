"""A real S3-compatible server on loopback for the weights-cache tests: moto's server mode
(``ThreadedMotoServer``) bound to 127.0.0.1 on a port of the kernel's choosing, and boto3 to
put objects into it (the test's own client, not the code under test)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

#: The credentials the tests hand the code under test, by environment variable name.
KEY_ENV = "AISCALE_TEST_S3_KEY"
SECRET_ENV = "AISCALE_TEST_S3_SECRET"
REGION = "us-east-1"


@dataclass
class S3Server:
    """A running moto server: its endpoint and a boto3 client of the test's own."""

    endpoint_url: str
    client: Any
    server: Any

    def new_bucket(self) -> str:
        """A fresh bucket (moto keeps every server's buckets in one process-wide store, so
        each test takes its own)."""
        name = f"weights-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes, *, sidecar: bool = True) -> str:
        """Store ``data`` at ``s3://bucket/key`` (with its ``.sha256`` beside it, in
        ``sha256sum``'s format, unless ``sidecar`` is false); its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        self.client.put_object(Bucket=bucket, Key=key, Body=data)
        if sidecar:
            line = f"{digest}  {key.rsplit('/', 1)[-1]}\n".encode()
            self.client.put_object(Bucket=bucket, Key=f"{key}.sha256", Body=line)
        return digest

    def stop(self) -> None:
        """Stop serving and close the listening socket (moto's ``stop`` only ends the serve
        loop; its werkzeug server's socket would be left for the garbage collector)."""
        self.client.close()
        self.server.stop()
        inner = getattr(self.server, "_server", None)
        if inner is not None:
            inner.server_close()


def start_s3_server() -> S3Server:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name=REGION,
    )
    return S3Server(endpoint, client, server)


def credentials() -> dict[str, str]:
    """The environment the code under test reads its credentials from."""
    return {KEY_ENV: "test", SECRET_ENV: "test"}
