# syntax=docker/dockerfile:1
# smoltbot image: the same `pip install` as CI and the .deb, pinned by packaging/constraints.txt.
#   docker build -t smoltbot .
#   docker run --rm -p 8787:8787 --env-file .env --stop-timeout 45 smoltbot
#   docker run --rm --env-file .env smoltbot smoltbot check-config
# twistd runs as PID 1 and handles SIGTERM itself (drain, then exit 0); give `docker stop` more
# than SHUTDOWN_DELAY_SECONDS + SHUTDOWN_DRAIN_TIMEOUT_SECONDS (--stop-timeout, stop_grace_period).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheels for the pinned dependencies (hash-checked) and for smoltbot itself ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY packaging/constraints.txt packaging/constraints.txt
RUN pip wheel --no-deps --require-hashes -r packaging/constraints.txt --wheel-dir /wheels
COPY . .
RUN pip wheel --no-deps . --wheel-dir /wheels

# ---- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venvs/smoltbot/bin:$PATH \
    SMOLTBOT_STATE_DIR=/var/lib/smoltbot

RUN groupadd --system --gid 10001 smoltbot \
 && useradd --system --uid 10001 --gid smoltbot --home-dir /var/lib/smoltbot --no-create-home \
      --shell /usr/sbin/nologin smoltbot \
 && install -d -o smoltbot -g smoltbot -m 0750 /var/lib/smoltbot

# Install the build stage's wheels (made from the hash-checked downloads; txpostgres has no wheel
# on PyPI, so its wheel is built there and cannot carry a PyPI hash) with no index, then build
# the Twisted plugin cache: the image's files are read-only to the service user.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venvs/smoltbot \
 && pip install --no-index --no-deps /wheels/*.whl \
 && pip check \
 && python -m compileall -q /opt/venvs/smoltbot/lib \
 && python -c 'from twisted.plugin import IPlugin, getPlugins; from twisted import plugins; list(getPlugins(IPlugin, plugins))' \
 && twistd --help | grep -q '^ *smoltbot '

USER 10001:10001
WORKDIR /var/lib/smoltbot
VOLUME ["/var/lib/smoltbot"]
EXPOSE 8787
STOPSIGNAL SIGTERM
# Every role serves /health/live; python, as slim images have no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % (os.environ.get('PORT') or '8787'), timeout=4)"]
CMD ["twistd", "--nodaemon", "--pidfile=", "smoltbot"]
