# tidegate container image: build with the Rust toolchain, run on a slim
# Debian base as a non-root user. The build stage runs the same commands as
# CI (.ci/run builds and tests with --locked; here the release binary).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY .cargo .cargo
COPY src src
COPY benches benches
COPY tests tests
# Stripped: the image carries no symbols (a panic's backtrace names no
# lines); the release profile keeps line tables for profiling elsewhere.
RUN cargo build --release --locked --bin tidegate --config profile.release.strip=true

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 tidegate \
    && useradd --system --uid 10001 --gid tidegate --home-dir /var/lib/tidegate --shell /usr/sbin/nologin tidegate \
    && mkdir -p /var/lib/tidegate /etc/tidegate \
    && chown tidegate:tidegate /var/lib/tidegate
COPY --from=build /src/target/release/tidegate /usr/local/bin/tidegate
COPY deploy/tidegate.container.toml /etc/tidegate/tidegate.toml
USER 10001:10001
VOLUME ["/var/lib/tidegate"]
EXPOSE 8080 9090
ENV TIDEGATE_CONFIG=/etc/tidegate/tidegate.toml
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/tidegate", "healthcheck", "--admin", "http://127.0.0.1:9090"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tidegate"]
CMD ["serve"]
