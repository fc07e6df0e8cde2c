# Stand-in for golang:1.26-bookworm: the host's Go toolchain on the Debian
# stand-in, with the repository's module cache and no module proxy.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates git gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY go /usr/local/go
COPY mod /go/pkg/mod
ENV GOPATH=/go \
    PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    GOTOOLCHAIN=local \
    GOPROXY=off
WORKDIR /go
