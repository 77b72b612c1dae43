# syntax=docker/dockerfile:1
# A multi-process IoT2MQTT connector image supervised by iot2mqtt-sv — the shape to copy.
#
# What happens at run time:
# - `docker run`: iot2mqtt-sv is PID 1. It reads /etc/iot2mqtt-sv.toml, starts the bridge
#   (MQTT settings from /app/.env and the environment, as the platform provides them), then the
#   programs in dependency and priority order, each once its dependencies are ready.
# - `docker stop`: Docker sends SIGTERM, then SIGKILL 10 s later. iot2mqtt-sv stops the programs in
#   reverse order within `shutdown_timeout` (8 s by default), publishes `offline` through the
#   bridge last, sweeps leftover processes, and exits 0 — before Docker's SIGKILL.
# - A critical program that goes FATAL makes iot2mqtt-sv stop everything and exit with that
#   program's exit code, so the restart policy (`unless-stopped` on the platform) takes over.
# - HEALTHCHECK runs `iot2mqtt-sv health` over the control socket: no curl, no TCP port, so two
#   instances with host networking never clash.
#
# Build from the repository root:
#   docker build -f docker/Dockerfile -t iot2mqtt-sv .
#   docker build -f docker/connector.Dockerfile -t my-connector .
#
# Build arguments (the defaults are the above; scripts/test-containers builds the same file
# without a registry by pointing the first two at locally built images):
#   BASE_IMAGE  the base: Debian bookworm with python3; nodejs is installed when it lacks it
#   SV_IMAGE    an image holding the static binaries in /usr/local/bin (what docker/Dockerfile builds)
#   EXAMPLE     the directory under examples/ copied to /app
#   CONFIG      the file of that directory that becomes /etc/iot2mqtt-sv.toml
#   docker build -f docker/connector.Dockerfile --build-arg EXAMPLE=sensor-hub \
#     --build-arg CONFIG=iot2mqtt-sv.toml -t sensor-hub .
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG SV_IMAGE=iot2mqtt-sv
FROM ${SV_IMAGE} AS sv

FROM ${BASE_IMAGE}
ARG EXAMPLE=quickstart
ARG CONFIG=iot2mqtt-sv.docker.toml
RUN command -v node >/dev/null || { apt-get update \
 && apt-get install -y --no-install-recommends nodejs \
 && rm -rf /var/lib/apt/lists/*; }

# One COPY, one layer: `iot2mqtt-sv` (PID 1, the CLI) and `iot2mqtt-sv-bridge` (the bridge it
# starts from the same directory).
COPY --from=sv /usr/local/bin/ /usr/local/bin/
COPY clients/python/iot2mqtt_sv.py /app/lib/iot2mqtt_sv.py
COPY clients/node/iot2mqtt_sv.js /app/lib/iot2mqtt_sv.js
# The same libraries where the examples' own configs look for them from a checkout
# (`${IOT2MQTT_SV_REPO}/clients/...`), so those configs run unchanged in the image.
COPY clients/python/iot2mqtt_sv.py /opt/iot2mqtt-sv/clients/python/iot2mqtt_sv.py
COPY clients/node/iot2mqtt_sv.js /opt/iot2mqtt-sv/clients/node/iot2mqtt_sv.js
COPY examples/${EXAMPLE}/ /app/
COPY examples/${EXAMPLE}/${CONFIG} /etc/iot2mqtt-sv.toml

# Programs run as an unprivileged user (per-program `user = "connector"` in the config); the
# supervisor itself stays root so it can switch users, own /run/iot2mqtt-sv and reap everything.
RUN useradd --system --home-dir /app --shell /usr/sbin/nologin connector \
 && mkdir -p /run/iot2mqtt-sv

ENV PYTHONPATH=/app/lib NODE_PATH=/app/lib PYTHONUNBUFFERED=1 IOT2MQTT_SV_REPO=/opt/iot2mqtt-sv
WORKDIR /app
# Fail the config check at build time rather than at the first start.
RUN IOT2MQTT_PATH=/app INSTANCE_NAME=build-check iot2mqtt-sv check

STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["iot2mqtt-sv", "health"]
ENTRYPOINT ["iot2mqtt-sv", "run"]
