#!/usr/bin/env bash
# Container test of bids_group_app: build the image from the Dockerfile and check that it runs
# non-root on a read-only root filesystem with no network, and that its results equal a run of
# the same command on the host.
#
#   scripts/container_test.sh [--pytest] [--keep]
#
#   --pytest   also build the `test` stage and run the test suite inside it (read-only, uid 1000,
#              with the image's own BLAS settings, as in CI)
#   --keep     keep the work folder (datasets and outputs) for inspection
#
# Steps: install podman/runc/debootstrap when missing (apt-get; root); build the local base image
# localhost/base:bookworm with debootstrap unless it exists (no registry is needed); build the
# image with --build-arg BASE_IMAGE=localhost/base:bookworm; write the example dataset on the host
# (bids_group_app_make_example from the host venv); run, in the container with
#   --read-only --tmpfs /tmp --user 1000:1000 --network none, dataset mounted read-only,
# (1) the default one-sample analysis and (2) --n-perm 200 --tfce, and (3) the same permutation
# analysis as two --perm-shard jobs sharing a --bids-database-dir, then --merge-perm-shards;
# run (1) and (2) on the host too and compare the maps (t, z, effect; logp, tfce, FWE maps) and
# null distributions. The container runs get the host's OPENBLAS_*/OMP_*/MKL_* variables, so both
# use the same BLAS kernels. Prints PASS/FAIL per check and exits 1 when any check failed.
#
# Environment (all optional):
#   ENGINE=podman|docker     container engine (default podman; docker: no debootstrap, no runc flag)
#   BASE_IMAGE=...           base image (default localhost/base:bookworm with podman,
#                            python:3.12-slim with docker); localhost/base:* is built with debootstrap
#   REBUILD_BASE=1           rebuild the debootstrap base image even if it exists
#   IMAGE=...                tag of the image under test (default localhost/bids-group-app:test)
#   NO_BUILD=1               test IMAGE as it is (no build)
#   HOST_VENV=DIR            venv with this checkout installed for the host run (default: the active
#                            venv, ./.venv or ./venv when they import this checkout; otherwise a venv
#                            is made in the work folder, and reused)
#   WORK=DIR                 work folder (default /tmp/bids_group_app-container-test); outside the
#                            repository, so nothing lands in the build context
#   TOLERANCE=1e-6           largest absolute difference allowed between container and host maps
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_pytest=0
keep=0
for arg in "$@"; do
    case "$arg" in
        --pytest) run_pytest=1 ;;
        --keep) keep=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "container_test: unknown argument $arg" >&2; exit 64 ;;
    esac
done

ENGINE="${ENGINE:-podman}"
if [ "$ENGINE" = podman ]; then
    BASE_IMAGE="${BASE_IMAGE:-localhost/base:bookworm}"
else
    BASE_IMAGE="${BASE_IMAGE:-python:3.12-slim}"
fi
IMAGE="${IMAGE:-localhost/bids-group-app:test}"
WORK="${WORK:-/tmp/bids_group_app-container-test}"
TOLERANCE="${TOLERANCE:-1e-6}"
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/bids_group_app/__init__.py")"
image_name="bids/bids_group_app"

# ---------------------------------------------------------------------------------------------
# Results
results=()
failed=0
pass() { results+=("PASS  $1"); echo "PASS  $1"; }
fail() { results+=("FAIL  $1"); echo "FAIL  $1" >&2; failed=1; }
check() {  # check NAME COMMAND...: PASS when the command succeeds
    local name="$1"; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
summary() {
    echo
    echo "==================== container_test summary ===================="
    printf '%s\n' "${results[@]}"
    [ -n "${build_seconds:-}" ] && echo "image build: ${build_seconds}s; image size: ${image_size:-?}"
    echo "total: $((SECONDS))s"
    if [ "$failed" = 0 ] && [ "${#results[@]}" -gt 0 ]; then
        echo "container_test: PASS (${#results[@]} checks)"
    else
        echo "container_test: FAIL"
    fi
}
die() { fail "$1"; summary; exit 1; }
log() { echo "--- $*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------------------------------------
# Tools
need=()
if [ "$ENGINE" = podman ]; then
    command -v podman >/dev/null || need+=(podman)
    command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need+=(runc)
    case "$BASE_IMAGE" in localhost/base:*) command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap) ;; esac
fi
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]} (apt-get)"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
        || die "install ${need[*]} with apt-get"
fi
export PATH="$PATH:/usr/sbin:/sbin"

mkdir -p "$WORK"
if [ "$ENGINE" = podman ]; then
    # podman's default ulimits and crun's cgroup handling are refused in some sandboxes
    if [ -z "${CONTAINERS_CONF:-}" ]; then
        printf '[containers]\ndefault_ulimits = []\n' > "$WORK/containers.conf"
        export CONTAINERS_CONF="$WORK/containers.conf"
    fi
    E=(podman --runtime runc)
else
    E=(docker)
fi

# ---------------------------------------------------------------------------------------------
# Base image (debootstrap, when it is a local one and does not exist yet)
image_exists() {
    if [ "$ENGINE" = podman ]; then "${E[@]}" image exists "$1"; else "${E[@]}" image inspect "$1" >/dev/null 2>&1; fi
}
if [ "${NO_BUILD:-0}" != 1 ]; then
    case "$BASE_IMAGE" in
    localhost/base:*)
        if [ "${REBUILD_BASE:-0}" = 1 ] || ! image_exists "$BASE_IMAGE"; then
            suite="${BASE_IMAGE#localhost/base:}"
            log "building base image $BASE_IMAGE with debootstrap ($suite; about 2 minutes)"
            t0=$SECONDS
            rootfs="$WORK/rootfs-$suite"
            as_root rm -rf "$rootfs"
            as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
                "$suite" "$rootfs" >"$WORK/debootstrap.log" 2>&1 \
                || die "debootstrap $suite (see $WORK/debootstrap.log)"
            as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
            as_root tar -C "$rootfs" -c . | "${E[@]}" import \
                --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
                --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null \
                || die "import $rootfs as $BASE_IMAGE"
            as_root rm -rf "$rootfs"
            pass "base image $BASE_IMAGE built with debootstrap ($((SECONDS - t0))s)"
        else
            log "reusing base image $BASE_IMAGE"
        fi ;;
    esac

    # -----------------------------------------------------------------------------------------
    # The image
    log "building $IMAGE from $repo/Dockerfile (BASE_IMAGE=$BASE_IMAGE)"
    build_opts=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$version"
                --build-arg "IMAGE_NAME=$image_name"
                --build-arg "VCS_REF=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
                --build-arg "BUILD_DATE=$(git -C "$repo" log -1 --format=%cI 2>/dev/null || date -u +%FT%TZ)")
    if [ "$ENGINE" = podman ]; then
        # pip inside the build reaches the package registry through the host network, trusting
        # the host's CA bundle
        build_opts+=(--network host)
        [ -d /etc/ssl/certs ] && build_opts+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
    fi
    t0=$SECONDS
    "${E[@]}" build "${build_opts[@]}" -t "$IMAGE" "$repo" >"$WORK/build.log" 2>&1 \
        || { tail -30 "$WORK/build.log" >&2; die "image build (see $WORK/build.log)"; }
    build_seconds=$((SECONDS - t0))
    pass "image $IMAGE built (${build_seconds}s)"
    if [ "$run_pytest" = 1 ]; then
        t0=$SECONDS
        "${E[@]}" build "${build_opts[@]}" --target test -t "$IMAGE-tests" "$repo" >"$WORK/build-tests.log" 2>&1 \
            || { tail -30 "$WORK/build-tests.log" >&2; die "test-stage build (see $WORK/build-tests.log)"; }
        pass "test stage $IMAGE-tests built ($((SECONDS - t0))s)"
    fi
fi
image_exists "$IMAGE" || die "image $IMAGE does not exist"
image_size="$("${E[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
log "image size $image_size"

# ---------------------------------------------------------------------------------------------
# Image metadata
inspect() { "${E[@]}" image inspect --format "$1" "$IMAGE"; }
check "image runs as uid 1000 (User=$(inspect '{{.Config.User}}'))" \
    test "$(inspect '{{.Config.User}}' | cut -d: -f1)" = 1000
check "entrypoint is the app ($(inspect '{{json .Config.Entrypoint}}'))" \
    grep -q bids_group_app <<<"$(inspect '{{json .Config.Entrypoint}}')"
check "OCI labels version=$version and source" bash -c \
    "[ \"\$1\" = '$version' ] && [ -n \"\$2\" ]" _ \
    "$(inspect '{{index .Config.Labels "org.opencontainers.image.version"}}')" \
    "$(inspect '{{index .Config.Labels "org.opencontainers.image.source"}}')"

# every run: read-only root, tmpfs /tmp, uid 1000, no network
RUN=("${E[@]}" run --rm --read-only --tmpfs /tmp --user 1000:1000 --network none --security-opt no-new-privileges)
# The same BLAS/OpenMP settings as the host run: OpenBLAS picks its kernels by CPU (e.g. AVX-512
# "SkylakeX" vs AVX2 "Haswell"), and float32 sums in another order differ in the last bits.
blas_env=()
while IFS= read -r name; do blas_env+=(-e "$name"); done < <(env | sed -n 's/^\(\(OPENBLAS\|OMP\|MKL\|GOTO\)_[A-Z0-9_]*\)=.*/\1/p' | sort)
RUN_PLAIN=("${RUN[@]}")
RUN+=("${blas_env[@]}")
[ "${#blas_env[@]}" -gt 0 ] && log "passed to the container from the host: $(printf '%s ' "${blas_env[@]}" | sed 's/-e //g')"

check "bids_group_app --version in the container says $version" \
    grep -q "$version" <<<"$("${RUN[@]}" "$IMAGE" --version 2>&1)"
check "bids_group_app_make_example is in the image" \
    "${RUN[@]}" --entrypoint bids_group_app_make_example "$IMAGE" --help >/dev/null
check "no pip, setuptools or compiler in the image" \
    "${RUN[@]}" --entrypoint /opt/venv/bin/python "$IMAGE" -c \
    "import importlib.util as u, shutil, sys; sys.exit(any(u.find_spec(m) for m in ('pip', 'setuptools')) or any(shutil.which(c) for c in ('gcc', 'cc', 'pip', 'pip3')))"

# ---------------------------------------------------------------------------------------------
# Host environment with this checkout
imports_checkout() {
    [ -x "$1/bin/python" ] && [ "$("$1/bin/python" -c 'import os, bids_group_app; print(os.path.dirname(os.path.realpath(bids_group_app.__file__)))' 2>/dev/null)" = "$repo/bids_group_app" ]
}
host_venv="${HOST_VENV:-}"
if [ -z "$host_venv" ]; then
    for candidate in "${VIRTUAL_ENV:-}" "$repo/.venv" "$repo/venv"; do
        if [ -n "$candidate" ] && imports_checkout "$candidate"; then host_venv="$candidate"; break; fi
    done
fi
if [ -z "$host_venv" ]; then
    host_venv="$WORK/host-venv"
    log "installing this checkout into $host_venv"
    { [ -x "$host_venv/bin/python" ] || python3 -m venv "$host_venv"; } \
        && "$host_venv/bin/python" -m pip install --quiet --upgrade "$repo" >"$WORK/host-venv.log" 2>&1 \
        || die "host venv $host_venv (see $WORK/host-venv.log)"
fi
log "host venv: $host_venv ($("$host_venv/bin/python" -c 'import bids_group_app, numpy, scipy, nilearn; print(f"bids_group_app {bids_group_app.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}, nilearn {nilearn.__version__}")'))"
log "container: $("${RUN[@]}" --entrypoint /opt/venv/bin/python "$IMAGE" -c 'import sys, bids_group_app, numpy, scipy, nilearn; print(f"python {sys.version.split()[0]}, bids_group_app {bids_group_app.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}, nilearn {nilearn.__version__}")')"

# ---------------------------------------------------------------------------------------------
# Example dataset (host) and output folders writable by uid 1000
data="$WORK/data"
rm -rf "$data" && mkdir -p "$data"
"$host_venv/bin/bids_group_app_make_example" "$data/ds" >"$WORK/make_example.log" 2>&1 \
    || die "bids_group_app_make_example (see $WORK/make_example.log)"
pass "example dataset written on the host ($data/ds)"
chmod -R a+rX "$data"
new_out() {  # new_out NAME: an empty folder the container user can write
    local d="$data/$1"
    mkdir -p "$d"
    if [ "$(id -u)" = 0 ]; then chown 1000:1000 "$d"; else chmod 777 "$d"; fi
    echo "$d"
}

run_container() {  # run_container LOG OUT_DIR [APP OPTIONS...]: extra mounts via $MOUNTS
    local logf="$1" out="$2"; shift 2
    "${RUN[@]}" -v "$data/ds:/data:ro" -v "$out:/out" ${MOUNTS:-} "$IMAGE" /data /out group "$@" >"$logf" 2>&1
}
run_host() {  # run_host LOG OUT_DIR [APP OPTIONS...]
    local logf="$1" out="$2"; shift 2
    env -u BIDS_GROUP_APP_CONTAINER -u APPTAINER_CONTAINER -u SINGULARITY_CONTAINER \
        "$host_venv/bin/bids_group_app" "$data/ds" "$out" group "$@" >"$logf" 2>&1
}

# compare HOST_DIR CONTAINER_DIR PATTERN...: same set of files; maps and null distributions equal
# within TOLERANCE (reports the largest difference and whether the files are identical)
compare() {
    "$host_venv/bin/python" - "$TOLERANCE" "$@" <<'EOF'
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

tol = float(sys.argv[1])
host, cont = Path(sys.argv[2]), Path(sys.argv[3])
patterns = sys.argv[4:]
ok = True
files = sorted({p.relative_to(host) for pat in patterns for p in host.glob(pat)})
other = sorted({p.relative_to(cont) for pat in patterns for p in cont.glob(pat)})
if not files:
    print("  no file matches", patterns); sys.exit(1)
if files != other:
    print("  different files:", sorted(set(map(str, files)) ^ set(map(str, other)))); ok = False
worst, identical = 0.0, 0
for rel in files:
    a_path, b_path = host / rel, cont / rel
    if not b_path.is_file():
        continue
    if a_path.read_bytes() == b_path.read_bytes():
        identical += 1
    if rel.name.endswith(".nii.gz"):
        a, b = (np.asarray(nib.load(p).dataobj, dtype=np.float64) for p in (a_path, b_path))
    else:  # tsv of numbers (null distributions)
        a, b = (np.genfromtxt(p, delimiter="\t", skip_header=1) for p in (a_path, b_path))
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        print(f"  {rel}: shape or NaN pattern differs"); ok = False; continue
    diff = float(np.nanmax(np.abs(a - b))) if np.isfinite(a).any() else 0.0
    worst = max(worst, diff)
    if diff > tol:
        print(f"  {rel}: max |host - container| = {diff:.3g} > {tol:g}"); ok = False
print(f"  {len(files)} files, {identical} byte-identical, max |host - container| = {worst:.3g}")
sys.exit(0 if ok else 1)
EOF
}

generated_by() {  # generated_by OUT_DIR: the Container entry of GeneratedBy, or "none"
    "$host_venv/bin/python" -c 'import json, sys; g = json.load(open(sys.argv[1] + "/dataset_description.json"))["GeneratedBy"][0]; print(json.dumps(g.get("Container", "none"), sort_keys=True))' "$1"
}
expect_container_entry() {
    local got; got="$(generated_by "$1")"
    echo "  GeneratedBy Container: $got"
    [ "$got" = "{\"Tag\": \"$image_name:$version\", \"Type\": \"docker\"}" ]
}

# ---------------------------------------------------------------------------------------------
# (1) parametric one-sample analysis
log "case 1: default one-sample analysis"
out_c="$(new_out out-container)"; out_h="$data/out-host"
t0=$SECONDS
if run_container "$WORK/case1-container.log" "$out_c"; then
    pass "case 1 container run exits 0 ($((SECONDS - t0))s; read-only, uid 1000, no network)"
else
    tail -20 "$WORK/case1-container.log" >&2; fail "case 1 container run exits 0 (see $WORK/case1-container.log)"
fi
run_host "$WORK/case1-host.log" "$out_h" || { tail -20 "$WORK/case1-host.log" >&2; fail "case 1 host run exits 0"; }
prefix="node-oneSample/model-oneSample_task-localizer_input-"
expected=()
for c in motor language; do
    for s in effect variance t z p; do expected+=("${prefix}${c}_contrast-intercept_stat-${s}_statmap.nii.gz"); done
done
expected+=(dataset_description.json model-oneSample_smdl.json model-oneSample_report.html logs/CITATION.md)
missing=(); for f in "${expected[@]}"; do [ -s "$out_c/$f" ] || missing+=("$f"); done
check "case 1 expected outputs exist (${#expected[@]} files${missing:+; missing: ${missing[*]}})" test "${#missing[@]}" = 0
check "case 1 dataset_description GeneratedBy has the Container entry" expect_container_entry "$out_c"
check "case 1 host run has no Container entry" test "$(generated_by "$out_h" 2>/dev/null)" = '"none"'
check "case 1 no staging or temporary files left in the output" \
    test -z "$(find "$out_c" -name '.*' ! -name .bidsignore -print -quit)"
check "case 1 t/z/effect maps equal to the host run (<= $TOLERANCE)" \
    compare "$out_h" "$out_c" 'node-*/*_stat-t_statmap.nii.gz' 'node-*/*_stat-z_statmap.nii.gz' \
    'node-*/*_stat-effect_statmap.nii.gz' 'node-*/*_stat-variance_statmap.nii.gz' 'node-*/*_stat-p_statmap.nii.gz' \
    'node-*/*_mask.nii.gz'

# ---------------------------------------------------------------------------------------------
# (2) permutation inference with TFCE
perm=(--filter contrast=motor --n-perm 200 --tfce --no-reports)
log "case 2: ${perm[*]}"
out_c="$(new_out perm-container)"; out_h="$data/perm-host"
t0=$SECONDS
if run_container "$WORK/case2-container.log" "$out_c" "${perm[@]}"; then
    pass "case 2 (--n-perm 200 --tfce) container run exits 0 ($((SECONDS - t0))s)"
else
    tail -20 "$WORK/case2-container.log" >&2; fail "case 2 container run exits 0 (see $WORK/case2-container.log)"
fi
run_host "$WORK/case2-host.log" "$out_h" "${perm[@]}" || { tail -20 "$WORK/case2-host.log" >&2; fail "case 2 host run exits 0"; }
stem="${prefix}motor_contrast-intercept"
missing=()
for s in t z effect logp logpmaxt tfce logpmaxtfce; do
    [ -s "$out_c/${stem}_stat-${s}_statmap.nii.gz" ] || missing+=("stat-$s")
done
check "case 2 permutation maps exist (t z effect logp logpmaxt tfce logpmaxtfce${missing:+; missing: ${missing[*]}})" \
    test "${#missing[@]}" = 0
check "case 2 GeneratedBy has the Container entry" expect_container_entry "$out_c"
check "case 2 maps and null distributions equal to the host run (<= $TOLERANCE)" \
    compare "$out_h" "$out_c" 'node-*/*_statmap.nii.gz' 'node-*/*_nulldist.tsv'

# ---------------------------------------------------------------------------------------------
# (3) the job-array workflow (scripts/slurm_array.sh) in the container: two shards sharing a
# PyBIDS database and a work folder, then the merge; equal to the single container run
log "case 3: ${perm[*]} as --perm-shard 1/2, 2/2 and --merge-perm-shards"
scratch="$(new_out scratch)"; out_s="$(new_out shard-container)"
MOUNTS="-v $scratch:/scratch"
shard_ok=1
for k in 1 2; do
    run_container "$WORK/case3-shard$k.log" "$out_s" "${perm[@]}" --bids-database-dir /scratch/bidsdb \
        -w /scratch/work --perm-shard "$k/2" || { tail -20 "$WORK/case3-shard$k.log" >&2; shard_ok=0; }
done
run_container "$WORK/case3-merge.log" "$out_s" "${perm[@]}" --bids-database-dir /scratch/bidsdb \
    -w /scratch/work --merge-perm-shards || { tail -20 "$WORK/case3-merge.log" >&2; shard_ok=0; }
MOUNTS=""
check "case 3 shard and merge runs exit 0 (PyBIDS database reused: $(grep -c 'reusing PyBIDS index' "$WORK"/case3-*.log | awk -F: '{s+=$2} END {print s}')x)" \
    test "$shard_ok" = 1
check "case 3 merged shards equal the single container run (<= $TOLERANCE)" \
    compare "$out_c" "$out_s" 'node-*/*_statmap.nii.gz' 'node-*/*_nulldist.tsv'

# ---------------------------------------------------------------------------------------------
# (4) optional: the test suite in the test stage, read-only and uid 1000, with the image's own
# BLAS settings (none: OpenBLAS picks its kernels for the CPU, as in CI and on users' machines)
if [ "$run_pytest" = 1 ]; then
    log "case 4: pytest in $IMAGE-tests"
    t0=$SECONDS
    if "${RUN_PLAIN[@]}" "$IMAGE-tests" -q >"$WORK/pytest.log" 2>&1; then
        pass "pytest in the container ($(tail -1 "$WORK/pytest.log" | tr -d '=' | xargs); $((SECONDS - t0))s)"
    else
        tail -30 "$WORK/pytest.log" >&2; fail "pytest in the container (see $WORK/pytest.log)"
    fi
fi

summary
if [ "$keep" = 0 ] && [ "$failed" = 0 ]; then as_root rm -rf "$data"; fi
exit "$failed"
