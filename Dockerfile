# syntax=docker/dockerfile:1
#
# The inferbatch image: one package, every role. The role is the first argument:
#   docker run IMAGE api | scheduler | worker --pool spot | migrate | keys create --user alice
#
# Built without the `local` extra (llama.cpp and the packaged small models are for
# `inferbatch up` on a laptop, not for a cluster that calls vLLM or another engine).
# The root filesystem may be mounted read-only: nothing is written outside /tmp and
# /var/lib/inferbatch, and both are meant to be volumes.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/inferbatch
# Metadata first, so the dependency layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/inferbatch/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/inferbatch/bin/pip install /wheels/inferbatch-*.whl \
 && /opt/inferbatch/bin/python -m compileall -q -j 0 /opt/inferbatch/lib \
 && /opt/inferbatch/bin/inferbatch --help > /dev/null

FROM ${PYTHON_IMAGE}
ARG UID=10001
LABEL org.opencontainers.image.title="inferbatch" \
      org.opencontainers.image.description="Self-hostable batch inference service speaking the OpenAI Batch API" \
      org.opencontainers.image.source="https://github.com/inferbatch/inferbatch" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid ${UID} inferbatch \
 && useradd --system --uid ${UID} --gid ${UID} --no-create-home \
      --home-dir /tmp --shell /usr/sbin/nologin inferbatch \
 && mkdir -p /var/lib/inferbatch/blobs \
 && chown -R ${UID}:${UID} /var/lib/inferbatch
COPY --from=builder /opt/inferbatch /opt/inferbatch
ENV PATH=/opt/inferbatch/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    INFERBATCH_HOST=0.0.0.0 \
    INFERBATCH_DATA_DIR=/var/lib/inferbatch \
    INFERBATCH_BLOB_DIR=/var/lib/inferbatch/blobs
WORKDIR /var/lib/inferbatch
VOLUME ["/tmp", "/var/lib/inferbatch"]
USER ${UID}:${UID}
# 8000: api (REST, portal, /metrics, /healthz, /readyz); 9090: scheduler and worker /metrics
# when INFERBATCH_METRICS_PORT=9090.
EXPOSE 8000 9090
ENTRYPOINT ["inferbatch"]
CMD ["--help"]
