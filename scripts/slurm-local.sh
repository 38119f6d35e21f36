#!/bin/bash
# slurm-local.sh: a throw-away single-machine Slurm cluster for tests and local runs.
#
#   scripts/slurm-local.sh start STATE_DIR   start munged, slurmctld, slurmd; wait for an idle node
#   scripts/slurm-local.sh stop  STATE_DIR   stop exactly the daemons started in STATE_DIR
#   scripts/slurm-local.sh status STATE_DIR  show which of them are alive
#
# Uses Debian's munge, slurmctld, slurmd and slurm-client (scripts/install-deps.sh) but changes
# nothing global: the munge key, sockets, pid files, logs, spool and state all live in STATE_DIR
# and the daemons are started directly (there is no systemd here). A system munge key or slurm
# config, if any, is neither read nor modified. Must run as root (SlurmUser=root; slurmd must be
# able to start jobs as any user).
#
# After `start`, clients need SLURM_CONF (and nothing else: the munge socket is in slurm.conf):
#   eval "$(scripts/slurm-local.sh start /tmp/slurm)"      # or: . /tmp/slurm/env.sh
#   srun -N1 -n2 hostname
#
# Environment knobs (all optional):
#   RN_SLURM_CPUS         CPUs of the node (default: as slurmd -C detects); when set, slurmd
#                         accepts it even if the machine has fewer (SlurmdParameters=config_overrides)
#   RN_SLURM_MEM_MB       RealMemory of the node, MB     (default: MemTotal minus 5%)
#   RN_SLURM_PORT         first port to try for slurmctld; slurmd uses the next one (default 6817;
#                         ports in use are skipped in steps of 2)
#   RN_SLURM_CRED_EXPIRE  AuthInfo cred_expire, seconds (default 10). This is also how long a
#                         requeued job waits before it may start again (Slurm's default is 120).
#   RN_SLURM_WAIT         seconds to wait for the node to become idle (default 60)
set -u
set -o pipefail

PROG=${0##*/}
die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

usage() {
  echo "usage: $PROG start|stop|status STATE_DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
CMD=$1
STATE=$2
[ -n "$STATE" ] || usage

DAEMONS="slurmd slurmctld munged"   # stop order

pidfile_of() { echo "$STATE/run/$1.pid"; }

# Prints the pid recorded for daemon $1 if that process is alive and is that program.
live_pid() {
  local f pid comm
  f=$(pidfile_of "$1")
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] || return 1
  [ -d "/proc/$pid" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  # comm is truncated to 15 chars; our names are shorter.
  [ "$comm" = "$1" ] || return 1
  echo "$pid"
}

tail_logs() {
  local f
  for f in "$STATE/log/munged.log" "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" \
           "$STATE/log/munged.out" "$STATE/log/slurmctld.out" "$STATE/log/slurmd.out"; do
    if [ -s "$f" ]; then
      echo "----- tail of $f -----" >&2
      tail -n 25 "$f" >&2
    fi
  done
}

fail_start() {
  log "start failed: $*"
  tail_logs
  do_stop >/dev/null 2>&1
  exit 1
}

# Listening TCP ports (decimal), from /proc (no dependency on ss/netstat).
listening_ports() {
  local f
  for f in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$f" ] || continue
    awk 'NR > 1 && $4 == "0A" { split($2, a, ":"); print strtonum("0x" a[2]) }' "$f" 2>/dev/null ||
      awk 'NR > 1 && $4 == "0A" { split($2, a, ":"); print a[2] }' "$f" |
        while read -r h; do echo $((16#$h)); done
  done
}

port_free() {
  local p=$1
  ! listening_ports | grep -qx "$p"
}

find_binary() {
  local b
  for b in "$@"; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
    for d in /usr/sbin /sbin /usr/bin /usr/local/sbin /usr/local/bin; do
      if [ -x "$d/$b" ]; then echo "$d/$b"; return 0; fi
    done
  done
  return 1
}

do_start() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (SlurmUser=root, slurmd starts jobs as any user)"
  local MUNGED SLURMCTLD SLURMD SINFO SCONTROL
  MUNGED=$(find_binary munged) || die "munged not found: install the Debian package munge (scripts/install-deps.sh)"
  SLURMCTLD=$(find_binary slurmctld) || die "slurmctld not found: install the Debian package slurmctld"
  SLURMD=$(find_binary slurmd) || die "slurmd not found: install the Debian package slurmd"
  SINFO=$(find_binary sinfo) || die "sinfo not found: install the Debian package slurm-client"
  SCONTROL=$(find_binary scontrol) || die "scontrol not found: install the Debian package slurm-client"

  local d
  for d in slurmd slurmctld munged; do
    if live_pid "$d" >/dev/null; then
      die "$d from $STATE is already running (pid $(live_pid "$d")); run '$PROG stop $STATE' first"
    fi
  done

  mkdir -p "$STATE" || die "cannot create $STATE"
  STATE=$(cd "$STATE" && pwd -P) || die "cannot resolve $STATE"
  # Spaces would break slurm.conf parsing.
  case "$STATE" in *[[:space:]]*) die "STATE_DIR must not contain whitespace: $STATE" ;; esac
  # munged refuses insecure paths: the state dir must not be group/world writable.
  chmod 0755 "$STATE"
  mkdir -p "$STATE/munge" "$STATE/run" "$STATE/log" "$STATE/spool/slurmctld" \
           "$STATE/spool/slurmd" || die "cannot create directories in $STATE"
  # The munge dir must be traversable by all (clients of any user reach the socket there);
  # the key itself is 0600.
  chmod 0755 "$STATE/munge" "$STATE/run" "$STATE/log" "$STATE/spool" "$STATE/spool/slurmd"
  chmod 0700 "$STATE/spool/slurmctld"
  rm -f "$STATE/run/"*.pid "$STATE/munge/munge.socket"*
  # Every start is a fresh cluster: no jobs recovered from a previous run in this STATE.
  rm -rf "${STATE:?}/spool/slurmctld/"* "${STATE:?}/spool/slurmd/"*

  # ---- munge: private key, socket, pid, log, seed all inside STATE ----
  local key="$STATE/munge/munge.key"
  if [ ! -s "$key" ]; then
    if command -v mungekey >/dev/null 2>&1 || [ -x /usr/sbin/mungekey ]; then
      "$(find_binary mungekey)" --create --keyfile="$key" --force >/dev/null 2>&1 || true
    fi
    if [ ! -s "$key" ]; then
      head -c 1024 /dev/urandom >"$key" || die "cannot write $key"
    fi
  fi
  chmod 0600 "$key"
  local sock="$STATE/munge/munge.socket.2"
  "$MUNGED" --force \
    --key-file="$key" --socket="$sock" --pid-file="$(pidfile_of munged)" \
    --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed" \
    </dev/null >"$STATE/log/munged.out" 2>&1 || fail_start "munged did not start"
  local i
  for i in $(seq 1 50); do
    [ -S "$sock" ] && live_pid munged >/dev/null && break
    sleep 0.1
  done
  [ -S "$sock" ] || fail_start "munged socket $sock did not appear"
  if command -v munge >/dev/null 2>&1 && command -v unmunge >/dev/null 2>&1; then
    munge -S "$sock" -n </dev/null 2>/dev/null | unmunge -S "$sock" >/dev/null 2>&1 ||
      fail_start "munge round trip through $sock failed"
  fi

  # ---- node description ----
  local host cpus mem topo
  host=$(hostname -s) || die "hostname -s failed"
  [ -n "$host" ] || die "empty short hostname"
  # The daemons talk over 127.0.0.1 (SlurmctldHost=host(addr), NodeAddr), so the hostname
  # need not resolve (containers, CI).
  # CPUs as slurmd sees them (slurmd -C); not plain nproc, which honours OMP_NUM_THREADS
  # (ctest sets it to 1) and the caller's affinity mask.
  local detected
  detected=$("$SLURMD" -C 2>/dev/null | head -n 1)
  cpus=${RN_SLURM_CPUS:-$(echo "$detected" | sed -n 's/.* CPUs=\([0-9]*\) .*/\1/p')}
  [ -n "$cpus" ] || cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  if [ -n "${RN_SLURM_MEM_MB:-}" ]; then
    mem=$RN_SLURM_MEM_MB
  else
    mem=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.95 }' /proc/meminfo)
    [ -n "$mem" ] && [ "$mem" -gt 0 ] || mem=1000
  fi
  # Use the topology slurmd detects when the CPU count agrees (avoids a drained node with
  # "Low socket*core*thread count"); otherwise just CPUs=.
  topo="CPUs=$cpus"
  if echo "$detected" | grep -q " CPUs=$cpus "; then
    topo=$(echo "$detected" | grep -o 'CPUs=[0-9]* Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*')
    [ -n "$topo" ] || topo="CPUs=$cpus"
  fi

  # ---- ports: skip pairs in use (e.g. another instance or a system slurm) ----
  local port=${RN_SLURM_PORT:-6817} tries=0
  while ! port_free "$port" || ! port_free $((port + 1)); do
    port=$((port + 2)); tries=$((tries + 1))
    [ $tries -lt 200 ] || die "no free port pair found from ${RN_SLURM_PORT:-6817}"
  done
  local cred_expire=${RN_SLURM_CRED_EXPIRE:-10}

  # ---- slurm.conf ----
  : >"$STATE/plugstack.conf"
  cat >"$STATE/slurm.conf" <<EOF
# Generated by scripts/slurm-local.sh for $STATE. Do not edit: regenerated by every start.
ClusterName=rnlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock,cred_expire=$cred_expire
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$STATE/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
SchedulerParameters=sched_interval=5
MailProg=/bin/true
$( [ -n "${RN_SLURM_CPUS:-}" ] && echo "SlurmdParameters=config_overrides" )
NodeName=$host NodeAddr=127.0.0.1 $topo RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

  # ---- daemons ----
  export SLURM_CONF="$STATE/slurm.conf"
  "$SLURMCTLD" -i -f "$SLURM_CONF" </dev/null >"$STATE/log/slurmctld.out" 2>&1 ||
    fail_start "slurmctld exited with an error"
  for i in $(seq 1 100); do
    live_pid slurmctld >/dev/null && "$SCONTROL" ping 2>/dev/null | grep -q 'is UP' && break
    sleep 0.1
  done
  live_pid slurmctld >/dev/null || fail_start "slurmctld is not running"
  "$SLURMD" -f "$SLURM_CONF" </dev/null >"$STATE/log/slurmd.out" 2>&1 ||
    fail_start "slurmd exited with an error"

  local wait=${RN_SLURM_WAIT:-60} start_t state=""
  start_t=$(date +%s)
  while :; do
    state=$("$SINFO" -h -n "$host" -o '%t' 2>/dev/null | head -n 1)
    [ "$state" = idle ] && break
    case "$state" in
      inval*|drain*|fail*)
        fail_start "node $host is '$state': $("$SINFO" -h -R -o '%E' 2>/dev/null | head -n 1)" ;;
    esac
    if [ $(($(date +%s) - start_t)) -ge "$wait" ]; then
      fail_start "node $host not idle after ${wait}s (sinfo state: '${state:-none}')"
    fi
    for d in slurmctld slurmd munged; do
      live_pid "$d" >/dev/null || fail_start "$d died"
    done
    sleep 0.2
  done

  cat >"$STATE/env.sh" <<EOF
# Source this to use the local Slurm cluster in $STATE.
export SLURM_CONF=$STATE/slurm.conf
export RN_SLURM_STATE=$STATE
export RN_MUNGE_SOCKET=$sock
EOF
  log "cluster up in $(($(date +%s) - start_t + 1))s: node $host ($topo RealMemory=$mem), ports $port/$((port + 1)), state in $STATE"
  cat "$STATE/env.sh" | grep '^export'
}

# Stops the daemons recorded in STATE's pid files, the job steps they started, and nothing else.
do_stop() {
  [ -d "$STATE" ] || { log "nothing to stop: $STATE does not exist"; return 0; }
  STATE=$(cd "$STATE" && pwd -P)
  local d pid pids="" i
  # 1. Cancel this cluster's jobs while the controller is still up, so job steps end cleanly.
  if live_pid slurmctld >/dev/null && [ -f "$STATE/slurm.conf" ]; then
    local jobs
    jobs=$(SLURM_CONF="$STATE/slurm.conf" timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      # shellcheck disable=SC2086
      SLURM_CONF="$STATE/slurm.conf" timeout 10 scancel --full $jobs 2>/dev/null
      SLURM_CONF="$STATE/slurm.conf" timeout 10 scancel $jobs 2>/dev/null
      # Wait until the steps are gone and slurmctld has seen the jobs complete.
      for i in $(seq 1 150); do
        [ -z "$(our_stepds)" ] &&
          [ -z "$(SLURM_CONF="$STATE/slurm.conf" timeout 5 squeue -h -t CG,R -o %A 2>/dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  # 2. The daemons, by pid file, one after the other (slurmd first: it still reports to
  #    slurmctld, which needs munged): SIGTERM, up to 10 s each, then SIGKILL.
  for d in $DAEMONS; do
    pid=$(live_pid "$d") || continue
    kill -TERM "$pid" 2>/dev/null
    pids="$pids $d:$pid"
    for i in $(seq 1 100); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
      log "$d (pid $pid) ignored SIGTERM for 10s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  # 3. Job steps that outlived slurmd (slurmstepd ignores SIGTERM): kill each whole tree.
  local steps
  steps=$(our_stepds)
  if [ -n "$steps" ]; then
    local tree=""
    for pid in $steps; do tree="$tree $(descendants "$pid")"; done
    log "killing leftover job steps:$tree"
    # shellcheck disable=SC2086
    kill -KILL $tree 2>/dev/null
  fi
  rm -f "$STATE/run/"*.pid
  [ -n "$pids" ] && log "stopped:$pids"
  return 0
}

# slurmstepd processes started by this STATE's slurmd: they inherit SLURM_CONF from it.
our_stepds() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$STATE/slurm.conf" &&
      echo "${p#/proc/}"
  done
}

# A pid followed by all its descendants.
descendants() {
  local kids k
  echo "$1"
  kids=$(cat /proc/"$1"/task/*/children 2>/dev/null)
  if [ -z "$kids" ]; then
    kids=$(ps -o pid= --ppid "$1" 2>/dev/null)
  fi
  for k in $kids; do descendants "$k"; done
}

do_status() {
  local d rc=0
  for d in munged slurmctld slurmd; do
    if pid=$(live_pid "$d"); then echo "$d: running (pid $pid)"; else echo "$d: not running"; rc=1; fi
  done
  return $rc
}

case "$CMD" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) usage ;;
esac
