# bids_group_app: BIDS-App for group-level neuroimaging statistics.
#
#   docker build -t bids/bids_group_app .
#   docker run --rm --read-only --tmpfs /tmp --user 1000:1000 \
#       -v /data/ds:/data:ro -v /data/out:/out bids/bids_group_app /data /out group
#
# The base image is a build argument so that a local base can be used where no registry is
# reachable (scripts/container_test.sh builds one with debootstrap: Debian bookworm, python3 3.11,
# python3-venv). Any base with python3 3.11 or 3.12 and the venv module works: requirements/image.txt
# pins wheels for those two.
#
# Stages: base (runtime environment and user) -> build (venv with the app and pip; no compiler:
# the compiled dependencies ship manylinux wheels) -> venv (pip/setuptools removed,
# bytecode precompiled) -> test (runtime + pytest + tests; `--target test`, used by CI) and
# runtime (the default, last stage: only the base image and /opt/venv).
ARG BASE_IMAGE=python:3.12-slim

############################################################################################
FROM ${BASE_IMAGE} AS base

# Everything that may write goes to /tmp (a tmpfs with --read-only), nothing to $HOME or the
# image: XDG caches, nilearn's data folder, joblib's memmaps, tempfile. MPLCONFIGDIR is not set:
# each run gives matplotlib a private folder (mode 0700, in -w or $TMPDIR, removed at the end),
# because under Apptainer /tmp is the host's /tmp, shared with every user of the node, where a
# fixed /tmp/matplotlib could hold another user's matplotlibrc.
# PyBIDS writes only where --bids-database-dir points; the app's scratch is --work-dir or $TMPDIR.
# PATH is spelled out: an image made with `podman import` (debootstrap) has no PATH of its own.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLBACKEND=Agg \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    XDG_DATA_HOME=/tmp/.local/share \
    NILEARN_DATA=/tmp/nilearn_data \
    NILEARN_SHARED_DATA=/tmp/nilearn_data \
    JOBLIB_TEMP_FOLDER=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba

# The non-root user (uid/gid 1000; any other uid works too: nothing depends on the passwd entry).
RUN (getent group 1000 >/dev/null || groupadd --gid 1000 app) \
 && (getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin app)

############################################################################################
FROM base AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python3 -m venv /opt/venv

# Dependencies first (their own layer: a code change does not reinstall them): the exact pins of
# requirements/image.txt, every package and version the image holds (regenerate them with
# scripts/pin_image_requirements.sh), so that a rebuild gives the same environment.
COPY requirements/image.txt /src/requirements/image.txt
RUN /opt/venv/bin/python -m pip install -r /src/requirements/image.txt

COPY pyproject.toml /src/pyproject.toml
COPY README.md /src/README.md
COPY boilerplate /src/boilerplate
COPY bids_group_app /src/bids_group_app
# --no-deps: the dependencies are the pinned ones above; pip check fails the build when they no
# longer satisfy pyproject.toml (a raised floor: rerun scripts/pin_image_requirements.sh).
RUN /opt/venv/bin/python -m pip install --no-deps /src \
 && /opt/venv/bin/python -m pip check \
 && /opt/venv/bin/python -m pip install --target /opt/pytest "pytest>=7.4"

############################################################################################
FROM build AS venv
# No installer left in the image; the dependencies' own test suites removed (about 130 MB; nilearn's
# are kept: nilearn._utils imports from them); bytecode compiled once, valid whatever the files'
# mtimes (the root filesystem is read-only at run time, so Python could not write it).
RUN /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel \
 && find /opt/venv/lib/python3*/site-packages -mindepth 2 -type d -name tests -not -path '*/nilearn/*' -prune \
        -exec rm -rf {} + \
 && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} + \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv \
 && /opt/venv/bin/bids_group_app --version

############################################################################################
# The test suite inside the runtime environment (CI: docker build --target test).
FROM base AS test
COPY --from=venv /opt/venv /opt/venv
COPY --from=build /opt/pytest /opt/pytest
COPY pyproject.toml /opt/tests/pyproject.toml
COPY tests /opt/tests/tests
COPY benchmarks /opt/tests/benchmarks
ENV PYTHONPATH=/opt/pytest
WORKDIR /opt/tests
USER 1000:1000
ENTRYPOINT ["/opt/venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider"]

############################################################################################
FROM base AS runtime
ARG VERSION=0.1.0
ARG IMAGE_NAME=bids/bids_group_app
ARG VCS_REF=""
ARG BUILD_DATE=""
LABEL org.opencontainers.image.title="bids_group_app" \
      org.opencontainers.image.description="BIDS-App for group-level neuroimaging statistics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/bids-apps/bids_group_app" \
      org.opencontainers.image.url="https://github.com/bids-apps/bids_group_app" \
      org.opencontainers.image.documentation="https://github.com/bids-apps/bids_group_app#readme" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="BIDS-Apps"

COPY --from=venv /opt/venv /opt/venv

# Written into GeneratedBy[].Container of every output dataset_description.json.
ENV BIDS_GROUP_APP_CONTAINER="${IMAGE_NAME}:${VERSION}"

WORKDIR /tmp
USER 1000:1000
ENTRYPOINT ["/opt/venv/bin/bids_group_app"]
CMD ["--help"]
