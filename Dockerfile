# bids_group_app container. The base image is a build argument so that a local base can be used
# where no registry is reachable (see README, "Container").
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bids_group_app" \
      org.opencontainers.image.description="BIDS-App for group-level neuroimaging statistics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/bids-apps/bids_group_app" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY pyproject.toml README.md /src/
COPY bids_group_app /src/bids_group_app
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir /src \
 && rm -rf /src /root/.cache \
 && useradd --create-home --uid 1000 app

# Caches go to a writable tmp so the image runs with a read-only root filesystem.
ENV PATH="/opt/venv/bin:${PATH}" \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    BIDS_GROUP_APP_CONTAINER="bids_group_app:${VERSION}"

USER app
ENTRYPOINT ["bids_group_app"]
