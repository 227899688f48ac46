#!/usr/bin/env bash
# Build the moelab container: a Docker/Podman image from slurm/container/Dockerfile, and an
# Apptainer image (.sif) for the cluster nodes, converted from that image or built from moelab.def.
#
#   bash slurm/container/build.sh image [OPTIONS] [-- EXTRA_BUILD_ARGS...]
#   bash slurm/container/build.sh sif   [OPTIONS] [-- EXTRA_APPTAINER_ARGS...]
#   bash slurm/container/build.sh base  [OPTIONS]
#
# image    docker/podman build (the context holds only what the recipe copies, so experiments/ and
#          data/ are never sent)
#   --engine docker|podman   default: docker when its daemon answers, else podman
#   --tag NAME               image name (default moelab:latest)
#   --base IMAGE             base image (default debian:bookworm-slim from the registry); its python3
#                            must satisfy pyproject.toml's requires-python
#   --make-base              where no image registry can be reached: build the base locally first
#                            (as `base` does) and build from it
#   --mirror URL             Debian mirror for --make-base (default http://deb.debian.org/debian)
#   --extras LIST            pyproject.toml extras, comma-separated (default none; "test" adds the
#                            test tools)
#   --ca-cert FILE           CA bundle (PEM) for pip's HTTPS during the build, for sites behind an
#                            inspecting proxy; passed as a build secret, not kept in the image
#
# sif      apptainer build (singularity works too: APPTAINER=singularity)
#   --output FILE            default moelab.sif
#   --from-image NAME        convert this docker/podman image (default: --tag, moelab:latest)
#   --from-def               build from slurm/container/moelab.def instead (pulls debian:bookworm-slim;
#                            runtime only, no extras); with --ca-cert it needs apptainer build --bind
#   --engine, --tag, --ca-cert as above
#
# base     debootstrap a minimal Debian bookworm (needs root and debootstrap) and import it into the
#          engine as moelab-base:bookworm
#   --engine, --mirror as above
#
# Arguments after `--` go to `docker|podman build` or `apptainer build` unchanged (e.g. --network host,
# --no-cache, --fakeroot). Examples:
#   bash slurm/container/build.sh image && bash slurm/container/build.sh sif --output /shared/moelab.sif
#   bash slurm/container/build.sh image --engine podman --make-base --ca-cert /etc/ssl/certs/ca-certificates.crt
#   bash slurm/container/build.sh image --extras test --tag moelab:test    # with the test tools
#   bash slurm/container/build.sh sif --from-def --output moelab.sif -- --fakeroot
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# what the Dockerfile and moelab.def copy, relative to the repository root
CONTEXT_PATHS=(pyproject.toml README.md src run/train_models.py run/create-plots.py slurm/container/install.sh)
LOCAL_BASE=moelab-base:bookworm
DEFAULT_BASE=debian:bookworm-slim

die() { echo "build.sh: $*" >&2; exit 2; }

mode="${1:-}"
case "$mode" in
image|sif|base) shift ;;
-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
*) die "first argument: image, sif or base (see the top of $0)" ;;
esac

engine="" tag="moelab:latest" base="" make_base=no mirror="http://deb.debian.org/debian" extras=""
ca_cert="" output="moelab.sif" from_image="" from_def=no passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
    --engine) engine="${2:?--engine needs docker or podman}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a name}"; shift 2 ;;
    --base) base="${2:?--base needs an image}"; shift 2 ;;
    --make-base) make_base=yes; shift ;;
    --mirror) mirror="${2:?--mirror needs a URL}"; shift 2 ;;
    --extras) extras="${2?--extras needs a list}"; shift 2 ;;
    --ca-cert) ca_cert="${2:?--ca-cert needs a file}"; shift 2 ;;
    --output) output="${2:?--output needs a file}"; shift 2 ;;
    --from-image) from_image="${2:?--from-image needs a name}"; shift 2 ;;
    --from-def) from_def=yes; shift ;;
    --) shift; passthrough=("$@"); break ;;
    *) die "unknown option $1 (see the top of $0)" ;;
    esac
done
if [ -n "$ca_cert" ]; then
    [ -f "$ca_cert" ] || die "--ca-cert $ca_cert: no such file"
    ca_cert="$(cd "$(dirname "$ca_cert")" && pwd)/$(basename "$ca_cert")"
fi
[ -z "$base" ] || [ "$make_base" = no ] || die "--base and --make-base exclude each other"

pick_engine() {
    if [ -n "$engine" ]; then
        command -v "$engine" >/dev/null || die "$engine not found"
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null; then
        engine=podman
    else
        die "no container engine: docker with a running daemon, or podman, is needed"
    fi
}

make_local_base() {
    [ "$(id -u)" = 0 ] || die "building the base with debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
    local root
    root="$(mktemp -d "${TMPDIR:-/tmp}/moelab-base.XXXXXX")"
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "rm -rf '$root'" EXIT
    echo "build.sh: debootstrap bookworm from $mirror" >&2
    debootstrap --variant=minbase bookworm "$root/rootfs" "$mirror" >&2
    rm -rf "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/lib/apt/lists/*
    tar -C "$root/rootfs" --numeric-owner -cf - . | "$engine" import - "$LOCAL_BASE"
    rm -rf "$root"
    trap - EXIT
    echo "build.sh: base image $LOCAL_BASE" >&2
}

build_image() {
    local context
    context="$(mktemp -d "${TMPDIR:-/tmp}/moelab-context.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$context'" EXIT
    tar -C "$repo" --exclude=__pycache__ --exclude='*.egg-info' -cf - "${CONTEXT_PATHS[@]}" | tar -C "$context" -xf -
    local args=(build -f "$here/Dockerfile" -t "$tag" --build-arg "BASE=${base:-$DEFAULT_BASE}"
                --build-arg "EXTRAS=$extras")
    if [ -n "$ca_cert" ]; then
        args+=(--secret "id=moelab_ca,src=$ca_cert")
    fi
    echo "build.sh: $engine ${args[*]} ${passthrough[*]} <context>" >&2
    if [ "$engine" = docker ]; then
        # RUN --mount (the CA secret) needs BuildKit
        DOCKER_BUILDKIT=1 docker "${args[@]}" "${passthrough[@]}" "$context"
    else
        "$engine" "${args[@]}" "${passthrough[@]}" "$context"
    fi
    rm -rf "$context"
    trap - EXIT
    echo "build.sh: built $tag ($("$engine" image inspect --format '{{.Size}}' "$tag") bytes)" >&2
}

build_sif() {
    local apptainer="${APPTAINER:-apptainer}"
    command -v "$apptainer" >/dev/null || die "$apptainer not found (module load apptainer?)"
    if [ "$from_def" = yes ]; then
        local args=(build)
        if [ -n "$ca_cert" ]; then
            args+=(--bind "$ca_cert:/run/secrets/moelab_ca")
        fi
        # %files sources are relative to the directory the build runs in
        (cd "$repo" && "$apptainer" "${args[@]}" "${passthrough[@]}" "$output_abs" slurm/container/moelab.def)
        return
    fi
    pick_engine
    local image="${from_image:-$tag}"
    "$engine" image inspect "$image" >/dev/null 2>&1 || die "no $engine image $image: run build.sh image first, or give --from-image / --from-def"
    if [ "$engine" = docker ]; then
        "$apptainer" build "${passthrough[@]}" "$output_abs" "docker-daemon:$image"
    else
        # apptainer reads podman's images through a docker archive
        local archive
        archive="$(mktemp -d "${TMPDIR:-/tmp}/moelab-sif.XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -rf '$archive'" EXIT
        podman save --format docker-archive -o "$archive/image.tar" "$image"
        "$apptainer" build "${passthrough[@]}" "$output_abs" "docker-archive:$archive/image.tar"
        rm -rf "$archive"
        trap - EXIT
    fi
}

case "$mode" in
base)
    pick_engine
    make_local_base
    ;;
image)
    pick_engine
    if [ "$make_base" = yes ]; then
        make_local_base
        base="$LOCAL_BASE"
    fi
    build_image
    ;;
sif)
    output_abs="$(realpath -m "$output")"
    build_sif
    echo "build.sh: wrote $output_abs ($(du -h "$output_abs" | cut -f1))" >&2
    ;;
esac
