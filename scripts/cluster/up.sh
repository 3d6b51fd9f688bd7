#!/usr/bin/env bash
# Start a local 2-node SLURM cluster: munged, one slurmctld and two slurmd (-N n1, -N n2) on 127.0.0.1, one CPU each.
# Config and state live under $CLUSTER_DIR (default <repo>/.cluster); `export SLURM_CONF=$CLUSTER_DIR/slurm.conf`
# points sinfo/sbatch/srun at it. Idempotent: daemons already running (by their pid files) are left alone.
# Installs slurm-wlm and munge with apt-get when missing (needs root). Waits until sinfo shows 2 idle nodes.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-$REPO/.cluster}"
PORT_BASE="${CLUSTER_PORT_BASE:-16817}"  # slurmctld; n1 and n2's slurmd take the next two ports
WAIT_S="${CLUSTER_WAIT_S:-120}"
NODE_MEM_MB="${CLUSTER_NODE_MEM_MB:-8192}"

log() { echo "cluster-up: $*"; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sinfo >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "cluster-up: slurm-wlm and munge are not installed; run as root (or: sudo apt-get install slurm-wlm munge)" >&2
    exit 1
  fi
  log "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d 101: the packages' own services must not start (this cluster runs its own daemons)
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1; fi
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
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
mkdir -p "$CLUSTER_DIR"/{munge,state,spool,log,run}
chmod 700 "$CLUSTER_DIR/munge"
CONF="$CLUSTER_DIR/slurm.conf"
export SLURM_CONF="$CONF"

# munge's socket path must fit a unix socket (108 bytes): fall back to /run for a deep checkout
SOCKET="$CLUSTER_DIR/munge/munge.socket"
if [ ${#SOCKET} -gt 100 ]; then
  SOCKET="/run/lit_tricks_munge_$(echo -n "$CLUSTER_DIR" | sha1sum | cut -c1-12)/munge.socket"
  mkdir -p "$(dirname "$SOCKET")"; chmod 700 "$(dirname "$SOCKET")"
fi
echo "$SOCKET" > "$CLUSTER_DIR/run/munge_socket"

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
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
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
log "2 idle nodes (n1, n2). export SLURM_CONF=$CONF"
