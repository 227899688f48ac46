#!/usr/bin/env bash
# Stand up a real single-node SLURM cluster, with accounting (slurmdbd + a private MariaDB), on this
# machine: for moelab's tests and for trying `submit` on a workstation. Debian 12, run as root.
#
#   sudo bash slurm/dev-cluster/start.sh      # idempotent: starts only what is not running
#   sudo bash slurm/dev-cluster/stop.sh       # stops only the daemons this script started
#
# Everything (configs, state, spool, logs, pid files, database) lives in $MOELAB_SLURM_DIR
# (default /var/lib/moelab-dev-cluster). /etc/slurm/slurm.conf is pointed at the generated file so
# that plain sbatch/sacct/submitit find the cluster. No init system is needed: the daemons are
# started directly, in the background.
set -euo pipefail

DIR="${MOELAB_SLURM_DIR:-/var/lib/moelab-dev-cluster}"
CLUSTER=moelab-dev
DB_PORT="${MOELAB_SLURM_DB_PORT:-3307}"
HOST="$(hostname -s)"

log() { echo "dev-cluster: $*" >&2; }
alive() { # alive PIDFILE NAME: the pid file names a running process called NAME
    [ -f "$1" ] && local pid && pid="$(cat "$1")" && [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] \
        && [ "$(cat "/proc/$pid/comm")" = "$2" ] && ! grep -q '^State:.*Z' "/proc/$pid/status"
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit="$1" what="$2"; shift 2
    for _ in $(seq $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    log "gave up waiting for $what; logs are in $DIR/log"; return 1
}

[ "$(id -u)" = 0 ] || { log "run as root (the daemons need it)"; exit 1; }

need=()
for bin in slurmctld slurmd sbatch munged slurmdbd mariadbd; do command -v "$bin" >/dev/null || need+=("$bin"); done
if [ ${#need[@]} -gt 0 ]; then
    log "installing SLURM, munge, slurmdbd and MariaDB (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
fi

mkdir -p "$DIR"/{etc,log,run,spool/ctld,spool/d,db}
chmod 755 "$DIR"

# munge: authentication between the daemons and the clients
if [ ! -f /etc/munge/munge.key ]; then mungekey --create >/dev/null 2>&1 || /usr/sbin/mungekey --create; fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge/munge.key
chmod 0755 /run/munge
if ! alive /run/munge/munged.pid munged; then
    log "starting munged"
    su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid" 2>/dev/null \
        || runuser -u munge -- /usr/sbin/munged
    echo munged >> "$DIR/run/started"
fi
wait_for 10 munge munge -n

# MariaDB in a private datadir, only for slurmdbd
if [ ! -d "$DIR/db/mysql" ]; then
    log "initialising the accounting database"
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/db" --auth-root-authentication-method=socket \
        --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1
fi
if ! alive "$DIR/run/mariadb.pid" mariadbd; then
    log "starting mariadbd on 127.0.0.1:$DB_PORT"
    setsid -f mariadbd --no-defaults --user=root --datadir="$DIR/db" --socket="$DIR/run/mariadb.sock" \
        --pid-file="$DIR/run/mariadb.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1
fi
wait_for 30 MariaDB mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -e "select 1"
mariadb --no-defaults --socket="$DIR/run/mariadb.sock" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'moelab-dev';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'moelab-dev';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

cat > "$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=moelab-dev
StorageLoc=slurm_acct_db
CONF
chmod 600 "$DIR/etc/slurmdbd.conf"

# the node as slurmd sees it: CPUs, sockets, cores, threads, memory
node="$(slurmd -C | head -1)"
cat > "$DIR/etc/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# limits (MaxSubmitJobs and friends) are enforced, as on a shared cluster; jobs need an association
AccountingStorageEnforce=associations,limits,qos
JobRequeue=1
ReturnToService=2
MaxArraySize=${MOELAB_SLURM_MAX_ARRAY_SIZE:-1001}
SchedulerParameters=batch_sched_delay=0,bf_interval=5,sched_interval=10
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mkdir -p /etc/slurm
ln -sf "$DIR/etc/slurm.conf" /etc/slurm/slurm.conf
export SLURM_CONF="$DIR/etc/slurm.conf"

if ! alive "$DIR/run/slurmdbd.pid" slurmdbd; then
    log "starting slurmdbd"
    slurmdbd  # reads slurmdbd.conf from the folder of $SLURM_CONF
fi
wait_for 30 slurmdbd sacctmgr -n show cluster
if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
# the user who submits needs an association (an account on this cluster) now that limits are enforced
if ! sacctmgr -n -P show account format=account | grep -qx moelab; then
    sacctmgr -i add account moelab cluster="$CLUSTER" >/dev/null
fi
submitter="${SUDO_USER:-$(id -un)}"
if ! sacctmgr -n -P show assoc where user="$submitter" format=user | grep -qx "$submitter"; then
    sacctmgr -i add user "$submitter" account=moelab cluster="$CLUSTER" >/dev/null
fi
restarted=
if ! alive "$DIR/run/slurmctld.pid" slurmctld; then
    log "starting slurmctld"
    slurmctld
    restarted=1
fi
wait_for 30 slurmctld scontrol ping
# Jobs saved from before the controller stopped: their processes are gone, often their folders too,
# and a cancel sent just before the stop may not have been saved (such a job comes back pending).
# A restarted dev cluster starts with an empty queue, before its node can start any of them.
if [ -n "$restarted" ]; then
    stale="$(squeue -h -o %i | tr '\n' ' ')"
    if [ -n "${stale// }" ]; then
        log "cancelling jobs left from before the restart: $stale"
        scancel $stale
    fi
fi
if ! alive "$DIR/run/slurmd.pid" slurmd; then
    log "starting slurmd"
    slurmd
fi
node_ready() { sinfo -h -N -o %T | grep -Eq '^(idle|mixed|allocated)'; }
if ! wait_for 20 "the node to come up" node_ready; then
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    wait_for 20 "the node to come up" node_ready
fi
log "ready: $(sinfo -h -o '%P %D node(s) %T') (cluster $CLUSTER, accounting on; logs in $DIR/log)"
