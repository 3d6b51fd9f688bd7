#!/usr/bin/env bash
# Stop the local cluster of scripts/cluster/up.sh: cancel its jobs, then stop the daemons it started (slurmd, job
# step daemons, slurmctld, slurmdbd, MariaDB, munged) by the pids in $CLUSTER_DIR/run (job step daemons: those whose
# SLURM_CONF is this cluster's). Nothing else is touched. Idempotent.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-$REPO/.cluster}"
CONF="$CLUSTER_DIR/slurm.conf"
RUN="$CLUSTER_DIR/run"
WAIT_S="${CLUSTER_WAIT_S:-30}"
export SLURM_CONF="$CONF"

# the pid in FILE when it still runs a program whose command line starts with NAME
live_pid() {
  local file=$1 name=$2 pid
  [ -s "$file" ] || return 1
  pid=$(tr -dc '0-9' < "$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "^[^ ]*$name" || return 1
  echo "$pid"
}

# slurmstepd processes of this cluster (their environment carries this SLURM_CONF)
stepd_pids() {
  local pid
  for pid in $(pgrep -x slurmstepd 2>/dev/null); do
    tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" && echo "$pid"
  done
}

# stop PID...: SIGTERM, wait up to WAIT_S, then SIGKILL
stop() {
  local pids=("$@") deadline=$((SECONDS + WAIT_S)) alive
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null
  while :; do
    alive=()
    for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && return 0
    if [ $SECONDS -ge $deadline ]; then kill -KILL "${alive[@]}" 2>/dev/null; return 0; fi
    sleep 0.2
  done
}

if ctld=$(live_pid "$RUN/slurmctld.pid" slurmctld); then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// }" ]; then
    echo "cluster-down: cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    deadline=$((SECONDS + WAIT_S))
    while [ -n "$(squeue -h -t R,CG,PD -o %A 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
  fi
fi
daemons=()
for node in n1 n2; do
  if pid=$(live_pid "$RUN/slurmd-$node.pid" slurmd); then daemons+=("$pid"); fi
done
stop "${daemons[@]}"
mapfile -t steps < <(stepd_pids)
stop "${steps[@]}"
if pid=$(live_pid "$RUN/slurmctld.pid" slurmctld); then stop "$pid"; fi
if pid=$(live_pid "$RUN/slurmdbd.pid" slurmdbd); then stop "$pid"; fi
if pid=$(live_pid "$RUN/mariadb.pid" mariadbd); then stop "$pid"; fi
if pid=$(live_pid "$RUN/munged.pid" munged); then stop "$pid"; fi
rm -f "$RUN"/*.pid
echo "cluster-down: stopped"
