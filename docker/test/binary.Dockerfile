# The image docker/Dockerfile produces (the two static binaries in /usr/local/bin, nothing else),
# made from binaries already built by scripts/build-static: the container test tier builds
# without a registry, so it cannot pull docker/Dockerfile's Rust build image.
#
#   podman build -f docker/test/binary.Dockerfile -t NAME DIR   # DIR holds both binaries
FROM scratch
COPY iot2mqtt-sv iot2mqtt-sv-bridge /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/iot2mqtt-sv"]
