#!/usr/bin/env bash
# Start a local 2-node SLURM cluster with accounting: munged, MariaDB, slurmdbd, one slurmctld and two slurmd
# (-N n1, -N n2) on 127.0.0.1, one CPU each. Config, sockets, the database and logs live under $CLUSTER_DIR (default
# <repo>/.cluster); `export SLURM_CONF=$CLUSTER_DIR/slurm.conf` points sinfo/sbatch/srun/sacct at it. Idempotent:
# daemons already running (by their pid files) are left alone; a fresh slurmctld (job ids from 1 again) gets an empty
# accounting database. Installs slurm-wlm, slurmdbd, munge and mariadb-server with apt-get when missing (needs root).
# Waits until sinfo shows 2 idle nodes. Ports: CLUSTER_PORT_BASE (slurmctld), +1 and +2 (slurmd n1, n2),
# +3 (slurmdbd), +4 (MariaDB, 127.0.0.1 only).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-$REPO/.cluster}"
PORT_BASE="${CLUSTER_PORT_BASE:-16817}"  # slurmctld; then slurmd n1, n2, slurmdbd, MariaDB
DBD_PORT=$((PORT_BASE + 3))
DB_PORT=$((PORT_BASE + 4))
START_S=$SECONDS
WAIT_S="${CLUSTER_WAIT_S:-120}"
NODE_MEM_MB="${CLUSTER_NODE_MEM_MB:-8192}"

PACKAGES="slurm-wlm slurmdbd munge mariadb-server"

log() { echo "cluster-up: $*"; }

install_packages() {
  local cmd missing=0
  for cmd in slurmctld slurmd munged sinfo sacct sacctmgr slurmdbd mariadbd mariadb-install-db mariadb; do
    command -v "$cmd" >/dev/null || missing=1
  done
  [ "$missing" = 1 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    echo "cluster-up: SLURM is not installed; run as root (or: sudo apt-get install $PACKAGES)" >&2
    exit 1
  fi
  log "installing $PACKAGES with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d 101: the packages' own services must not start (this cluster runs its own daemons)
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1; fi
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
  if [ "$created" = 1 ]; then rm -f "$policy"; fi
}

# pid_alive FILE NAME: the pid in FILE runs a program whose command line starts with NAME
pid_alive() {
  local file=$1 name=$2 pid
  [ -s "$file" ] || return 1
  pid=$(tr -dc '0-9' < "$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "^[^ ]*$name"
}

install_packages
mkdir -p "$CLUSTER_DIR"/{munge,state,spool,log,run,mariadb}
chmod 700 "$CLUSTER_DIR/munge" "$CLUSTER_DIR/mariadb"
CONF="$CLUSTER_DIR/slurm.conf"
export SLURM_CONF="$CONF"

# munge's socket path must fit a unix socket (108 bytes): fall back to /run for a deep checkout
SOCKET="$CLUSTER_DIR/munge/munge.socket"
if [ ${#SOCKET} -gt 100 ]; then
  SOCKET="/run/lit_tricks_munge_$(echo -n "$CLUSTER_DIR" | sha1sum | cut -c1-12)/munge.socket"
  mkdir -p "$(dirname "$SOCKET")"; chmod 700 "$(dirname "$SOCKET")"
fi
echo "$SOCKET" > "$CLUSTER_DIR/run/munge_socket"
DB_SOCKET="$(dirname "$SOCKET")/mariadb.sock"  # MariaDB's socket, beside munge's (the same length limit)
echo "$DB_SOCKET" > "$CLUSTER_DIR/run/mariadb_socket"
DB_DATA="$CLUSTER_DIR/mariadb/data"
DB_PASSWORD_FILE="$CLUSTER_DIR/mariadb/password"  # slurmdbd's database password (generated, mode 600)
if [ ! -s "$DB_PASSWORD_FILE" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$DB_PASSWORD_FILE")
fi
DB_PASSWORD="$(cat "$DB_PASSWORD_FILE")"

HOST="$(hostname -s)"
cat > "$CONF.tmp" <<CONF
# Written by scripts/cluster/up.sh: a 2-node cluster on one machine (multiple-slurmd build). Do not edit.
ClusterName=lit_tricks
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT_BASE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again after this many seconds (default 120)
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$CLUSTER_DIR/state
SlurmdSpoolDir=$CLUSTER_DIR/spool/%n
SlurmctldPidFile=$CLUSTER_DIR/run/slurmctld.pid
SlurmdPidFile=$CLUSTER_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$CLUSTER_DIR/log/slurmctld.log
SlurmdLogFile=$CLUSTER_DIR/log/slurmd-%n.log
# no cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# accounting through slurmdbd (sacct): a job that dies without writing a result shows its final state (submitit)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the munge socket of connections to slurmdbd (AuthInfo's is not used for them)
AccountingStoragePass=$SOCKET
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
# schedule pending jobs every 2 s (defaults 60 s and 30 s): a requeued job starts again as soon as it may
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
JobRequeue=1
# seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or times out
KillWait=30
MinJobAge=600
SlurmdTimeout=120
InactiveLimit=0
MailProg=/bin/true
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT_BASE + 1)) CPUs=1 RealMemory=$NODE_MEM_MB State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT_BASE + 2)) CPUs=1 RealMemory=$NODE_MEM_MB State=UNKNOWN
PartitionName=local Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s "$CONF.tmp" "$CONF"; then mv "$CONF.tmp" "$CONF"; else rm -f "$CONF.tmp"; fi

# slurmdbd has no -f option: it reads slurmdbd.conf beside $SLURM_CONF, and only when its mode is 600
DBD_CONF="$CLUSTER_DIR/slurmdbd.conf"
(umask 077; cat > "$DBD_CONF.tmp" <<CONF
# Written by scripts/cluster/up.sh: the accounting daemon of the local cluster, on MariaDB. Do not edit.
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$CLUSTER_DIR/run/slurmdbd.pid
LogFile=$CLUSTER_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
CONF
)
if ! cmp -s "$DBD_CONF.tmp" "$DBD_CONF"; then mv "$DBD_CONF.tmp" "$DBD_CONF"; else rm -f "$DBD_CONF.tmp"; fi
chmod 600 "$DBD_CONF"

KEY="$CLUSTER_DIR/munge/munge.key"
if [ ! -s "$KEY" ]; then
  log "generating a munge key"
  (umask 077; dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none)
fi
chmod 600 "$KEY"

if ! pid_alive "$CLUSTER_DIR/run/munged.pid" munged; then
  log "starting munged"
  rm -f "$SOCKET" "$SOCKET.lock"
  munged --force --key-file="$KEY" --socket="$SOCKET" --pid-file="$CLUSTER_DIR/run/munged.pid" \
    --log-file="$CLUSTER_DIR/log/munged.log" --seed-file="$CLUSTER_DIR/munge/munged.seed"
fi
# wait_until SECONDS WHAT COMMAND...: poll COMMAND (quietly) until it succeeds; fail with the logs after SECONDS
wait_until() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster-up: $what not ready after $limit s; logs in $CLUSTER_DIR/log" >&2
      tail -n 20 "$CLUSTER_DIR"/log/*.log >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}
sql() { mariadb --no-defaults --socket="$DB_SOCKET" --user=root --batch --skip-column-names -e "$1"; }

# MariaDB, started by hand (no systemd): a private data directory, 127.0.0.1 only, root by its unix socket; a small
# buffer pool (the database holds this cluster's few jobs) and the lock wait slurmdbd asks for
DB_OPTS=(--innodb-buffer-pool-size=32M --innodb-lock-wait-timeout=900)
if ! pid_alive "$CLUSTER_DIR/run/mariadb.pid" mariadbd; then
  if [ ! -d "$DB_DATA/mysql" ]; then
    log "creating the accounting database's data directory"
    rm -rf "$DB_DATA"
    mariadb-install-db --no-defaults --datadir="$DB_DATA" --user=root --auth-root-authentication-method=socket \
      --skip-test-db "${DB_OPTS[@]}" > "$CLUSTER_DIR/log/mariadb-install.log" 2>&1
  fi
  log "starting MariaDB"
  rm -f "$DB_SOCKET"
  setsid mariadbd --no-defaults --datadir="$DB_DATA" --socket="$DB_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --pid-file="$CLUSTER_DIR/run/mariadb.pid" --log-error="$CLUSTER_DIR/log/mariadb.log" --user=root \
    --skip-name-resolve "${DB_OPTS[@]}" > /dev/null 2>&1 < /dev/null &
  wait_until "$WAIT_S" MariaDB sql "SELECT 1"
fi
if ! pid_alive "$CLUSTER_DIR/run/slurmctld.pid" slurmctld; then
  # a fresh slurmctld numbers jobs from 1 again: old records of the same ids would answer sacct for the new jobs
  if pid_alive "$CLUSTER_DIR/run/slurmdbd.pid" slurmdbd; then
    dbd_pid=$(tr -dc '0-9' < "$CLUSTER_DIR/run/slurmdbd.pid")
    kill "$dbd_pid"
    wait_until 30 "slurmdbd's stop" test ! -d "/proc/$dbd_pid"
  fi
  sql "DROP DATABASE IF EXISTS slurm_acct_db"
fi
sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1'; ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'"
if ! pid_alive "$CLUSTER_DIR/run/slurmdbd.pid" slurmdbd; then
  log "starting slurmdbd"
  slurmdbd
  wait_until "$WAIT_S" slurmdbd sacctmgr --noheader list cluster
fi
if ! pid_alive "$CLUSTER_DIR/run/slurmctld.pid" slurmctld; then
  log "starting slurmctld"
  slurmctld -c -f "$CONF"  # -c: a fresh start (no jobs left from an earlier cluster)
fi
for node in n1 n2; do
  if ! pid_alive "$CLUSTER_DIR/run/slurmd-$node.pid" slurmd; then
    log "starting slurmd -N $node"
    slurmd -N "$node" -f "$CONF"
  fi
done

deadline=$((SECONDS + WAIT_S))
while :; do
  idle=$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 == "idle"' | sort -u | wc -l || true)
  if [ "$idle" -ge 2 ]; then break; fi
  # nodes that came back from an earlier run may be down/drained: resume them
  for node in n1 n2; do
    state=$(sinfo -h -n "$node" -o '%t' 2>/dev/null | head -1 || true)
    case "$state" in down*|drain*|drng*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;; esac
  done
  if [ $SECONDS -ge $deadline ]; then
    echo "cluster-up: sinfo does not show 2 idle nodes after ${WAIT_S} s; logs in $CLUSTER_DIR/log" >&2
    sinfo -N >&2 || true
    tail -n 20 "$CLUSTER_DIR"/log/*.log >&2 || true
    exit 1
  fi
  sleep 0.5
done
log "2 idle nodes (n1, n2), accounting on ($((SECONDS - START_S)) s). export SLURM_CONF=$CONF"
