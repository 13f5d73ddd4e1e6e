# beenergised-exporter container image.
#
#   docker build -t beenergised-exporter .
#   docker run --rm -p 10140:10140 beenergised-exporter --demo
#
# Configure it like the console script: flags after the image name, or BEENERGISED_*
# environment variables; pass the client secret as a file (BEENERGISED_CLIENT_SECRET_FILE
# pointing at a mounted Docker/Kubernetes secret), never as a build argument.

# Stage 1: build a wheel of the project from the files it needs, nothing else.
FROM python:3.11-slim AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: a venv holding the wheel and its dependencies from PyPI.
FROM python:3.11-slim
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="beenergised-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the be.ENERGISED CPO API: charging station fleet, firmware and changes" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH="/opt/venv/bin:${PATH}"
COPY --from=build /wheels /tmp/wheels
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin exporter
USER 10001:10001
EXPOSE 10140
# /healthz answers 200 while the process runs and needs no credentials (basic auth skips it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10140/healthz', timeout=4)"]
ENTRYPOINT ["/opt/venv/bin/beenergised-exporter"]
