# strata's own executor image, laid out like kaniko's so that it drops in
# where kaniko's image is used:
#
#   /kaniko/strata                       the static strata binary (ENTRYPOINT)
#   /kaniko/executor                     a symlink to it, for scripts that call kaniko's path
#   /kaniko/.docker/                     registry auth: mount config.json here (DOCKER_CONFIG)
#   /kaniko/ssl/certs/ca-certificates.crt  CA bundle for registry TLS
#   /workspace                           the default build context (and working directory)
#
# The build context is a directory holding the static binary as `strata` and a
# CA bundle as `ca-certificates.crt`. docs/ci/build-executor-image.sh makes it
# and runs strata on this file; tests/tests/self_image.rs runs that script.
#
# Targets: the default (last) stage is the bare executor. `--target debug` adds
# busybox at /busybox, on PATH, for CI systems that run a shell in the job's
# image (GitLab CI), like kaniko's `:debug` image.

# Lays out the image's tree under /out (and busybox for `debug` under /debug).
FROM busybox:1.37 AS tree
COPY strata /out/kaniko/strata
COPY ca-certificates.crt /out/kaniko/ssl/certs/ca-certificates.crt
RUN set -eu; \
    chmod 0755 /out/kaniko/strata; \
    chmod 0644 /out/kaniko/ssl/certs/ca-certificates.crt; \
    ln -s strata /out/kaniko/executor; \
    mkdir -p /out/kaniko/.docker /out/workspace /out/etc /out/tmp /out/root; \
    chmod 1777 /out/tmp; \
    chmod 0700 /out/root; \
    echo 'hosts: files dns' > /out/etc/nsswitch.conf; \
    mkdir -p /debug/busybox; \
    cp /bin/busybox /debug/busybox/busybox; \
    for applet in $(/bin/busybox --list); do \
      [ "$applet" = busybox ] || ln -s busybox "/debug/busybox/$applet"; \
    done

FROM scratch AS executor
COPY --from=tree /out/ /
ENV HOME=/root \
    USER=root \
    PATH=/usr/local/bin:/kaniko \
    SSL_CERT_FILE=/kaniko/ssl/certs/ca-certificates.crt \
    SSL_CERT_DIR=/kaniko/ssl/certs \
    DOCKER_CONFIG=/kaniko/.docker/
WORKDIR /workspace
LABEL org.opencontainers.image.title="strata executor" \
      org.opencontainers.image.description="Daemonless OCI image builder: a drop-in for kaniko's executor"
ENTRYPOINT ["/kaniko/strata"]

FROM executor AS debug
COPY --from=tree /debug/busybox/ /busybox/
ENV PATH=/usr/local/bin:/kaniko:/busybox

# The default target: the bare executor.
FROM executor
