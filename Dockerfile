# The four DockerCoins images, built from source: one build stage compiles every binary statically,
# then each service gets a runtime image holding that one binary and nothing else (FROM scratch,
# no shell, non-root, a few MB). docker-compose.yml picks the stage with `target:`.
#
# The images are named `dockercoins-mesh/<service>:<tag>` (docker-compose.yml, deploy/): on Docker
# Hub, `dockercoins/*` are the workshop's original Python images, which must never be pulled in
# place of these. VERSION becomes each image's version label, so that two tags built from the
# same sources (`TAG=v0.2 docker compose build`) are still two images to roll between.
#
# With a registry, `rust:1.95-slim-bookworm` is pulled as usual. Without one, scripts/offline-images
# makes a local image of that name from Debian packages and this machine's Rust toolchain; the
# runtime images are the same either way, since they are built FROM scratch.
ARG RUST_IMAGE=rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what the binaries are built from, so that editing tests, scripts or docs keeps this cached.
COPY Cargo.toml Cargo.lock build.rs ./
# Build settings: the allocator's compile-time defaults, v0 symbol names (see .cargo/config.toml).
COPY .cargo .cargo
COPY proto proto
COPY src src
COPY crates crates
# crt-static links glibc in: the binaries need no shared library, so `scratch` can run them.
# (Name lookups still work: Docker puts /etc/hosts and /etc/resolv.conf in every container.)
# RUSTFLAGS replaces .cargo/config.toml's flags, so its v0 symbol names are asked for again.
ENV RUSTFLAGS="-C target-feature=+crt-static -C symbol-mangling-version=v0"
RUN target="$(rustc -vV | sed -n 's/^host: //p')" \
 && cargo build --release --locked --target "$target" \
      --bin rng --bin hasher --bin worker --bin webui \
 && mkdir /out \
 && for bin in rng hasher worker webui; do cp "target/$target/release/$bin" /out/; done

# Each runtime stage: the binary, a non-root user, the port, and the binary's own healthcheck
# (the image has no curl or shell to check with).
#
# Healthchecks at Docker's usual pace: Swarm acts on them (a start-first update waits for the
# new task to be healthy; an unhealthy task is replaced), but every check is a `docker exec` of a
# new process, so every 2 s on 150 containers saturated two cores. Every 30 s they cost nothing
# a learner can see. Compose acts on none of them, so docker-compose.yml switches them off.
FROM scratch AS rng
COPY --from=build /out/rng /usr/local/bin/rng
USER 65532:65532
EXPOSE 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/rng", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/rng"]
# Last, so that two versions share every layer but this one.
ARG VERSION=v0.1
LABEL org.opencontainers.image.title="dockercoins-mesh/rng" org.opencontainers.image.version="$VERSION"

FROM scratch AS hasher
COPY --from=build /out/hasher /usr/local/bin/hasher
USER 65532:65532
EXPOSE 8002
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/hasher", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/hasher"]
ARG VERSION=v0.1
LABEL org.opencontainers.image.title="dockercoins-mesh/hasher" org.opencontainers.image.version="$VERSION"

FROM scratch AS worker
COPY --from=build /out/worker /usr/local/bin/worker
USER 65532:65532
# Where the workshop runs it (Compose, `docker service create`, `kubectl create deployment` +
# `kubectl expose`), rng, hasher and redis are found by those names: no variable to set.
ENV RNG_ENDPOINT=http://rng:8001 HASHER_ENDPOINT=http://hasher:8002 REDIS_URL=redis://redis:6379
EXPOSE 9000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/worker"]
ARG VERSION=v0.1
LABEL org.opencontainers.image.title="dockercoins-mesh/worker" org.opencontainers.image.version="$VERSION"

FROM scratch AS webui
COPY --from=build /out/webui /usr/local/bin/webui
USER 65532:65532
ENV REDIS_URL=redis://redis:6379
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/webui", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/webui"]
ARG VERSION=v0.1
LABEL org.opencontainers.image.title="dockercoins-mesh/webui" org.opencontainers.image.version="$VERSION"
