#!/usr/bin/env bash
# Build the Molecule rehearsal image (Debian bookworm + PostgreSQL 15) without
# a registry: debootstrap a root filesystem, `podman import` it, then apply
# containers/Containerfile on top. The image tag is a hash of its recipe (this
# script, the Containerfile, its entrypoint and the package list), so a rerun
# with an unchanged recipe returns at once, and a changed recipe builds a new
# tag. The debootstrap tarball is cached under .cache/image/ (git-ignored).
#
# Prints the image reference (localhost/capital-pg:<hash>) as the last line of
# stdout; progress goes to stderr.
#
# Environment:
#   CAPITAL_IMAGE_NAME     repository part of the tag (default localhost/capital-pg)
#   CAPITAL_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   CAPITAL_IMAGE_REBUILD  set to 1 to ignore both caches
#   CAPITAL_CONTAINER_ENGINE  podman (default) or docker: the same steps with
#                          `docker import` / `docker build`
#   CONTAINERS_CONF        defaults to containers/containers.conf of this repo
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
containers_dir="${repo_root}/containers"
cache_dir="${repo_root}/.cache/image"
image_name="${CAPITAL_IMAGE_NAME:-localhost/capital-pg}"
mirror="${CAPITAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="bookworm"
engine="${CAPITAL_CONTAINER_ENGINE:-podman}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-${containers_dir}/containers.conf}"

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: ERROR: %s\n' "$*" >&2; exit 1; }

case "${engine}" in
    podman | docker) ;;
    *) die "CAPITAL_CONTAINER_ENGINE must be podman or docker, not '${engine}'" ;;
esac
# `podman image exists` has no docker equivalent; `image inspect` works in both.
image_exists() { "${engine}" image inspect "$1" >/dev/null 2>&1; }

for tool in "${engine}" debootstrap sha256sum tar; do
    command -v "${tool}" >/dev/null 2>&1 \
        || die "${tool} not found; install it with: apt-get install -y podman runc debootstrap"
done

# The package list without comments and blank lines, in file order.
packages="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "${containers_dir}/packages.txt" | paste -sd, -)"
[[ -n "${packages}" ]] || die "containers/packages.txt lists no packages"

# Bump when the debootstrap steps below change what the root filesystem holds.
rootfs_recipe_version=1
# The cached rootfs depends on the suite, the package list and the steps
# (rootfs_recipe_version); the image tag on everything: this script, the
# package list, the Containerfile and the entrypoint.
rootfs_hash="$(printf '%s\n%s\n%s\n' "${rootfs_recipe_version}" "${suite}" "${packages}" | sha256sum | cut -c1-16)"
recipe_hash="$(cat "${BASH_SOURCE[0]}" "${containers_dir}/packages.txt" \
    "${containers_dir}/Containerfile" "${containers_dir}/capital-db-entrypoint" \
    | sha256sum | cut -c1-16)"
image="${image_name}:${recipe_hash}"
rootfs_tar="${cache_dir}/rootfs-${suite}-${rootfs_hash}.tar"

if [[ "${CAPITAL_IMAGE_REBUILD:-0}" != 1 ]] && image_exists "${image}"; then
    log "image ${image} is up to date (recipe unchanged)"
    "${engine}" tag "${image}" "${image_name}:latest"
    printf '%s\n' "${image}"
    exit 0
fi

[[ "$(id -u)" == 0 ]] \
    || die "building the image needs root (debootstrap, the rootful image store); run as root (CI does)"

start_seconds="${SECONDS}"
mkdir -p "${cache_dir}"

if [[ "${CAPITAL_IMAGE_REBUILD:-0}" == 1 || ! -s "${rootfs_tar}" ]]; then
    work="$(mktemp -d "${cache_dir}/rootfs.XXXXXX")"
    # A failed build leaves nothing half-made behind.
    trap 'rm -rf --one-file-system "${work}"' EXIT
    target="${work}/root"
    log "debootstrap ${suite} (${packages}) from ${mirror}"
    # Two stages so a policy-rc.d can be placed before packages are
    # configured: postgresql-15's postinst must not start a server inside
    # the build chroot (it would outlive the build and hold the files).
    debootstrap --foreign --variant=minbase --include="${packages}" \
        "${suite}" "${target}" "${mirror}" >&2
    printf '#!/bin/sh\nexit 101\n' >"${target}/usr/sbin/policy-rc.d"
    chmod 0755 "${target}/usr/sbin/policy-rc.d"
    chroot "${target}" /debootstrap/debootstrap --second-stage >&2
    rm -f "${target}/usr/sbin/policy-rc.d"
    # Second stage mounts /proc and /sys in the target; unmount before tar.
    for mnt in sys proc; do
        if mountpoint -q "${target}/${mnt}"; then umount -l "${target}/${mnt}"; fi
    done
    printf 'deb %s %s main\n' "${mirror}" "${suite}" >"${target}/etc/apt/sources.list"
    rm -rf "${target}/var/cache/apt/archives/"*.deb "${target}/var/lib/apt/lists/"* \
        "${target}/debootstrap"
    tar --numeric-owner --xattrs -C "${target}" -cf "${work}/rootfs.tar" .
    # Only the current recipe's tarball is worth its half gigabyte.
    find "${cache_dir}" -maxdepth 1 -name "rootfs-*.tar" -delete
    mv "${work}/rootfs.tar" "${rootfs_tar}"
    rm -rf --one-file-system "${work}"
    trap - EXIT
    log "root filesystem cached at ${rootfs_tar} ($(( SECONDS - start_seconds ))s)"
else
    log "reusing cached root filesystem ${rootfs_tar}"
fi

base="${image_name}-rootfs:${rootfs_hash}"
if [[ "${CAPITAL_IMAGE_REBUILD:-0}" == 1 ]] || ! image_exists "${base}"; then
    log "${engine} import ${rootfs_tar} -> ${base}"
    "${engine}" import --change 'CMD ["/bin/bash"]' "${rootfs_tar}" "${base}" >/dev/null
fi

log "${engine} build ${image}"
# --network=none: the Containerfile only configures what debootstrap
# installed; nothing in it may reach the network.
"${engine}" build --network=none --build-arg "BASE=${base}" \
    -f "${containers_dir}/Containerfile" -t "${image}" "${containers_dir}" >&2
"${engine}" tag "${image}" "${image_name}:latest"
# Earlier recipes' tags only hold disk space; their layers go when untagged.
for old_tag in $("${engine}" images --format '{{.Repository}}:{{.Tag}}' "${image_name}"); do
    if [[ "${old_tag}" != "${image}" && "${old_tag}" != "${image_name}:latest" ]]; then
        "${engine}" rmi "${old_tag}" >/dev/null 2>&1 || true
    fi
done
log "built ${image} in $(( SECONDS - start_seconds ))s"
printf '%s\n' "${image}"
