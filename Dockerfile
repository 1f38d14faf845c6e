# The four DockerCoins images, built from source: one build stage compiles every binary statically,
# then each service gets a runtime image holding that one binary and nothing else (FROM scratch,
# no shell, non-root, a few MB). docker-compose.yml picks the stage with `target:`.
#
# With a registry, `rust:1.95-slim-bookworm` is pulled as usual. Without one, scripts/offline-images
# makes a local image of that name from Debian packages and this machine's Rust toolchain; the
# runtime images are the same either way, since they are built FROM scratch.
ARG RUST_IMAGE=rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what the binaries are built from, so that editing tests, scripts or docs keeps this cached.
COPY Cargo.toml Cargo.lock build.rs ./
# Build settings: the allocator's compile-time defaults (see .cargo/config.toml).
COPY .cargo .cargo
COPY proto proto
COPY src src
COPY crates crates
# crt-static links glibc in: the binaries need no shared library, so `scratch` can run them.
# (Name lookups still work: Docker puts /etc/hosts and /etc/resolv.conf in every container.)
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN target="$(rustc -vV | sed -n 's/^host: //p')" \
 && cargo build --release --locked --target "$target" \
      --bin rng --bin hasher --bin worker --bin webui \
 && mkdir /out \
 && for bin in rng hasher worker webui; do cp "target/$target/release/$bin" /out/; done

# Each runtime stage: the binary, a non-root user, the port, and the binary's own healthcheck
# (the image has no curl or shell to check with).
FROM scratch AS rng
COPY --from=build /out/rng /usr/local/bin/rng
USER 65532:65532
EXPOSE 8001
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/rng", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/rng"]

FROM scratch AS hasher
COPY --from=build /out/hasher /usr/local/bin/hasher
USER 65532:65532
EXPOSE 8002
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/hasher", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/hasher"]

FROM scratch AS worker
COPY --from=build /out/worker /usr/local/bin/worker
USER 65532:65532
EXPOSE 9000
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/worker"]

FROM scratch AS webui
COPY --from=build /out/webui /usr/local/bin/webui
USER 65532:65532
EXPOSE 8000
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/webui", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/webui"]
