# beenergised-exporter container image.
#
#   docker build -t beenergised-exporter --build-arg VERSION=0.1.0 \
#       --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --rm -p 10140:10140 beenergised-exporter --demo
#
# podman and buildah build OCI images by default, and the OCI format has no HEALTHCHECK: they
# drop it with a warning. Build with `--format docker` to keep it. `make image` builds this
# file with buildah without a registry, as tests/test_image.py does (deploy/image.py).
#
# Configure it like the console script: flags after the image name, or BEENERGISED_*
# environment variables; pass the client secret as a file (BEENERGISED_CLIENT_SECRET_FILE
# pointing at a mounted Docker/Kubernetes secret), never as a build argument.
#
# Commands call python3 and `python3 -m pip`/`python3 -m venv`, which every Python image has,
# rather than `python`/`pip`. tests/test_image.py builds this file unchanged with buildah.
# VERSION and REVISION (the git commit) only label the image: `make image` and the release
# workflow pass them.

# Stage 1: a wheel of the project (from the files it needs, nothing else) and wheels of its
# dependencies (--only-binary: nothing is compiled), installed into a virtualenv at the path it
# keeps in the runtime stage; then pip and setuptools leave the virtualenv.
FROM python:3.11-slim AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY exporter ./exporter
RUN python3 -m pip wheel --no-cache-dir --only-binary=:all: --wheel-dir /wheels . \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir --no-index --find-links /wheels \
        beenergised-exporter \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

# Stage 2: the runtime, the virtualenv and an unprivileged user; no compiler, pip or wheel.
FROM python:3.11-slim
ARG SOURCE_URL="https://github.com/beenergised-exporter/beenergised-exporter"
ARG VERSION=""
ARG REVISION=""
LABEL org.opencontainers.image.title="beenergised-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the be.ENERGISED CPO API: charging station fleet, firmware and changes" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.url="${SOURCE_URL}" \
      org.opencontainers.image.documentation="${SOURCE_URL}/blob/main/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/venv/bin:${PATH}"
RUN groupadd --gid 10001 exporter \
    && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init --home-dir /nonexistent \
        --shell /usr/sbin/nologin exporter
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 10140
# /healthz answers 200 while the process runs and needs no credentials (basic auth skips it).
# Only the Docker image format has HEALTHCHECK: podman and buildah need `--format docker`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10140/healthz', timeout=4)"]
ENTRYPOINT ["/opt/venv/bin/beenergised-exporter"]
