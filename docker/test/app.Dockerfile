# The smallest useful image around iot2mqtt-sv: its static binaries COPYed into a base image, the
# supervisor as ENTRYPOINT and its own HEALTHCHECK — what a user writes for a connector whose
# programs are already in the base. The container test tier builds it on a busybox base and on a
# Debian base (python3, nodejs) and mounts each scenario's config at /etc/iot2mqtt-sv.toml.
#
#   podman build -f docker/test/app.Dockerfile \
#     --build-arg BASE_IMAGE=<base> --build-arg SV_IMAGE=<image with /usr/local/bin/iot2mqtt-sv*> -t NAME .
ARG BASE_IMAGE=debian:bookworm-slim
ARG SV_IMAGE=iot2mqtt-sv
FROM ${SV_IMAGE} AS sv

FROM ${BASE_IMAGE}
# One COPY for both: the supervisor and the bridge it starts from the same directory.
COPY --from=sv /usr/local/bin/ /usr/local/bin/
# SIGTERM is the engine's default; said here because the shutdown sequence depends on it.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["iot2mqtt-sv", "health"]
ENTRYPOINT ["iot2mqtt-sv", "run"]
