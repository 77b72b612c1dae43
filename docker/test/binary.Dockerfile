# The image docker/Dockerfile produces (the static binary at /iot2mqtt-sv, nothing else), made
# from a binary already built by scripts/build-static: the container test tier builds without a
# registry, so it cannot pull docker/Dockerfile's Rust build image.
#
#   podman build -f docker/test/binary.Dockerfile -t NAME DIR   # DIR holds iot2mqtt-sv
FROM scratch
COPY iot2mqtt-sv /iot2mqtt-sv
ENTRYPOINT ["/iot2mqtt-sv"]
