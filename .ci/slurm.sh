#!/usr/bin/env bash
# A single-node Slurm cluster on this machine for the executor tests (tests/test_executors.py): installs
# Debian's slurm-wlm and munge when missing, writes /etc/slurm/slurm.conf for this host (its real CPUs and
# memory from `slurmd -C`), starts munged, slurmctld and slurmd as root and waits until `sinfo` answers with
# the node up. Idempotent: a second run finds the daemons alive under the same configuration and only waits.
# No cgroups (containers rarely delegate them): proctrack/linuxproc, task/none. No accounting database:
# accounting_storage/none, finished jobs go to a jobcomp text file; reprodiff asks `squeue` and the tasks'
# own output files, never `sacct`. cred_expire=10 (default 120) is also how long a requeued job waits before
# it may start again: the requeue test would wait two minutes otherwise; a 5 s scheduler interval starts it soon after.
set -euo pipefail
CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm
WAIT_S="${SLURM_WAIT_S:-60}"

say() { echo "slurm.sh: $*"; }
die() { echo "slurm.sh: error: $*" >&2; exit 1; }
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }  # a pid file whose process still runs

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  say "installing slurm-wlm and munge (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start_munge() {
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
  if ! alive /run/munge/munged.pid; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
  fi
  munge -n | unmunge >/dev/null || die "munge does not round-trip a credential; see /var/log/munge/munged.log"
}

put() {  # write file $1 with content $2 when it differs; prints "changed" then
  if [[ ! -f "$1" ]] || [[ "$(cat "$1")" != "$2" ]]; then
    printf '%s\n' "$2" >"$1.tmp" && mv "$1.tmp" "$1"
    echo changed
  fi
}

write_conf() {  # prints "changed" when the configuration on disk changed
  local node mem gpus gres=""
  node="$(slurmd -C | head -n 1)"  # NodeName=<host> CPUs=... RealMemory=...
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")"
  node="$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<<"$node")"  # leave the OS some room
  # NVIDIA GPUs become generic resources, so that --gpus-per-task=1 runs one task per GPU (Slurm sets each
  # job's CUDA_VISIBLE_DEVICES; without cgroups nothing stops a job from touching the other devices)
  gpus="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)"
  if [[ "$gpus" -gt 0 ]]; then
    node="$node Gres=gpu:$gpus"
    gres="GresTypes=gpu"
  fi
  mkdir -p /etc/slurm "$LOGS" /var/spool/slurmctld /var/spool/slurmd
  put /etc/slurm/gres.conf "$( [[ "$gpus" -gt 0 ]] && echo "Name=gpu File=/dev/nvidia[0-$((gpus - 1))]" || true)"
  put "$CONF" "$(cat <<EOF
# written by .ci/slurm.sh: one node, this machine
ClusterName=reprodiff-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
SchedulerParameters=sched_interval=5,bf_interval=5
MinJobAge=300
$gres
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)"
}

stop_daemon() {  # only the daemon this script started, by its pid file
  local pidfile=$1
  if alive "$pidfile"; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 50); do alive "$pidfile" || return 0; sleep 0.1; done
    die "$(basename "$pidfile" .pid) did not stop"
  fi
}

start_slurm() {
  if [[ -n "$(write_conf)" ]]; then
    stop_daemon /run/slurmd.pid
    stop_daemon /run/slurmctld.pid
  fi
  if ! alive /run/slurmctld.pid; then say "starting slurmctld"; slurmctld; fi
  if ! alive /run/slurmd.pid; then say "starting slurmd"; slurmd; fi
}

wait_for_node() {
  local state=""
  for _ in $(seq $((WAIT_S * 2))); do
    state="$(sinfo -h -N -o %t 2>/dev/null | head -n 1 || true)"
    case "$state" in
      idle|mix|alloc|comp) say "node ${state} (sinfo)"; return 0 ;;
      down*|drain*|drng*) scontrol update NodeName=ALL State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "the node is not up after ${WAIT_S} s (sinfo state '${state:-no answer}'); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
}

[[ $EUID -eq 0 ]] || die "run as root (it installs packages and starts the Slurm daemons as root)"
install_packages
start_munge
start_slurm
wait_for_node
