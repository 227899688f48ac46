#!/usr/bin/env bash
# Stop the daemons of the dev cluster started by start.sh (by their pid files, never by name).
# Jobs still queued are kept in the state directory and come back on the next start.
set -euo pipefail
DIR="${MOELAB_SLURM_DIR:-/var/lib/moelab-dev-cluster}"

stop() { # stop PIDFILE NAME
    [ -f "$1" ] || return 0
    local pid
    pid="$(cat "$1")"
    if [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            { [ -r "/proc/$pid/status" ] && ! grep -q '^State:.*Z' "/proc/$pid/status"; } || break
            sleep 0.2
        done
        echo "dev-cluster: stopped $2 ($pid)" >&2
    fi
    rm -f "$1"
}

stop "$DIR/run/slurmd.pid" slurmd
stop "$DIR/run/slurmctld.pid" slurmctld
stop "$DIR/run/slurmdbd.pid" slurmdbd
stop "$DIR/run/mariadb.pid" mariadbd
# munged is shared with anything else on the machine: stop it only if start.sh started it
if [ -f "$DIR/run/started" ] && grep -qx munged "$DIR/run/started"; then
    stop /run/munge/munged.pid munged
fi
rm -f "$DIR/run/started"
