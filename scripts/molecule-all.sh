#!/usr/bin/env bash
# Run every Molecule scenario (`make molecule`, so also `make test` and CI).
#
#   scripts/molecule-all.sh [SCENARIO...]     default: rollback dirty default local
#
# The container scenarios (default, rollback, dirty) need a container engine:
# podman by default, docker with CAPITAL_MOLECULE_DRIVER=docker. Where the
# engine is missing (a developer's laptop) they are skipped with a message
# and the run still passes on the `local` scenario, unless CI is set: CI
# installs podman and must never skip them, so there a missing engine fails.
#
# The rehearsal image is built first (scripts/build-image.sh; a no-op when
# its recipe is unchanged). Scenarios run CAPITAL_MOLECULE_JOBS at a time
# (default 2); logs are kept in .cache/molecule-logs/; each scenario's wall
# time is printed at the end.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"
export PATH="${repo_root}/.venv/bin:${PATH}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-${repo_root}/containers/containers.conf}"
driver="${CAPITAL_MOLECULE_DRIVER:-podman}"
export CAPITAL_MOLECULE_DRIVER="${driver}"

container_scenarios=(default rollback dirty)
if (($# > 0)); then
    scenarios=("$@")
else
    # Longest first, so two parallel jobs finish close together.
    scenarios=(rollback dirty default local)
fi

log() { printf 'molecule-all: %s\n' "$*" >&2; }

needs_container=false
for s in "${scenarios[@]}"; do
    [[ -f "molecule/${s}/molecule.yml" ]] || { log "ERROR: no scenario molecule/${s}"; exit 2; }
    [[ " ${container_scenarios[*]} " == *" ${s} "* ]] && needs_container=true
done

skip_reason=""
if [[ "${needs_container}" == true ]]; then
    if ! command -v "${driver}" >/dev/null 2>&1; then
        skip_reason="${driver} is not installed"
    elif [[ "${driver}" == podman && "$(id -u)" != 0 ]] \
        && ! podman image exists "${CAPITAL_IMAGE_NAME:-localhost/capital-pg}:latest" 2>/dev/null; then
        # debootstrap needs root; a rootless user can still run scenarios on an image root built.
        skip_reason="the rehearsal image is not built and building it (debootstrap) needs root"
    fi
fi

if [[ -n "${skip_reason}" ]]; then
    if [[ -n "${CI:-}" ]]; then
        log "ERROR: ${skip_reason}, and CI never skips the container scenarios."
        log "Install them first: apt-get install -y podman runc debootstrap"
        exit 1
    fi
    log "SKIPPING the container scenarios (${container_scenarios[*]}): ${skip_reason}."
    log "Install podman (apt-get install -y podman runc debootstrap) or set"
    log "CAPITAL_MOLECULE_DRIVER=docker to run them; running the rest."
    kept=()
    for s in "${scenarios[@]}"; do
        [[ " ${container_scenarios[*]} " == *" ${s} "* ]] || kept+=("${s}")
    done
    scenarios=("${kept[@]}")
    needs_container=false
fi

results=()
overall=0
start_all="${SECONDS}"

if [[ "${needs_container}" == true ]]; then
    t0="${SECONDS}"
    CAPITAL_MOLECULE_IMAGE="$(CAPITAL_CONTAINER_ENGINE="${driver}" scripts/build-image.sh | tail -n 1)"
    export CAPITAL_MOLECULE_IMAGE
    results+=("image ${CAPITAL_MOLECULE_IMAGE}: ready in $((SECONDS - t0))s")
fi

# Scenarios run CAPITAL_MOLECULE_JOBS at a time (default 2: most of their time is
# podman exec and Python start-up, so two overlap well on two cores). With
# more than one job each scenario's output goes to its log file, printed
# whole when the scenario fails; with one job it streams as well.
jobs="${CAPITAL_MOLECULE_JOBS:-2}"
[[ "${jobs}" =~ ^[1-9][0-9]*$ ]] || { log "ERROR: CAPITAL_MOLECULE_JOBS must be a positive integer"; exit 2; }
log_dir="${repo_root}/.cache/molecule-logs"
mkdir -p "${log_dir}"

run_scenario() {
    local s="$1" t0="${SECONDS}" rc=0
    if [[ "${jobs}" == 1 ]]; then
        molecule test -s "${s}" 2>&1 | tee "${log_dir}/${s}.log" || rc=$?
    else
        molecule test -s "${s}" >"${log_dir}/${s}.log" 2>&1 || rc=$?
    fi
    printf '%s %s\n' "${rc}" "$((SECONDS - t0))" >"${log_dir}/${s}.result"
}

for s in "${scenarios[@]}"; do
    rm -f "${log_dir}/${s}.result"
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
    log "scenario ${s}: molecule test -s ${s} (log: ${log_dir}/${s}.log)"
    run_scenario "${s}" &
done
wait

for s in "${scenarios[@]}"; do
    read -r rc seconds <"${log_dir}/${s}.result" || { rc=1; seconds="?"; }
    if [[ "${rc}" == 0 ]]; then
        results+=("scenario ${s}: passed in ${seconds}s")
    else
        if [[ "${jobs}" != 1 ]]; then
            log "----- scenario ${s} failed; its log follows -----"
            cat "${log_dir}/${s}.log" >&2
        fi
        results+=("scenario ${s}: FAILED after ${seconds}s (log: ${log_dir}/${s}.log)")
        overall=1
    fi
done

for line in "${results[@]}"; do log "${line}"; done
log "total $((SECONDS - start_all))s"
exit "${overall}"
