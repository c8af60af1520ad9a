#!/usr/bin/env bash
# tests/slurm/cluster.sh - a real one-node SLURM cluster on localhost for the tests in tests/slurm/.
#
#   tests/slurm/cluster.sh start    install packages if missing, start everything, print "slurm ready: ..."
#                                   (idempotent: a cluster already started by this script is reused)
#   tests/slurm/cluster.sh status   exit 0 when the cluster started by this script is up and answering
#   tests/slurm/cluster.sh stop     cancel all jobs, stop the daemons by their recorded PIDs
#
# Debian 12's slurm-wlm (22.05) with munge, plus slurmdbd and a private MariaDB so that plain `sacct`
# works (submitit reads job states from sacct; without it a cancelled job's result() waits forever).
# No systemd: the daemons are started by hand, as root. Everything (config, state, logs, sockets,
# PID files, database) lives under $SLURMTEST_DIR (default ${TMPDIR:-/tmp}/tokenbench-slurm), except
# the symlink /etc/slurm/slurm.conf. Ports on 127.0.0.1: 6817 slurmctld, 6818 slurmd, 6819 slurmdbd,
# 3307 MariaDB. Partition "debug", node "localhost" with the shape `slurmd -C` reports.
# Use it with: export SLURM_CONF=$SLURMTEST_DIR/etc/slurm.conf  (or: source $SLURMTEST_DIR/slurm.env)
#
# Measured on the 2-core Debian 12 CI machine (Slurm 22.05.8):
#   start, packages missing (apt-get update + install ~20.5 s, then start)    ~26 s
#   start, packages present (incl. a ~3 s smoke job)                             ~6 s
#   start when already up (reuse)                                                0.05 s
#   sbatch -> job script running: 0.4-1.0 s with batch_sched_delay=0 (1.4-3.0 s with the default)
#   stop                                                  ~2.5-3 s (+ up to KillWait=3 s with running jobs)
set -euo pipefail

B=${SLURMTEST_DIR:-${TMPDIR:-/tmp}/tokenbench-slurm}
CLUSTER=localcluster
NODE=localhost
CTLD_PORT=6817 SLURMD_PORT=6818 DBD_PORT=6819 DB_PORT=3307
DB_PASS=tokenbench-slurm-db
PKGS="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
# All daemons this script starts and records a PID for.
DAEMONS="slurmd slurmctld slurmdbd mariadbd munged"
export SLURM_CONF=$B/etc/slurm.conf

T0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
log() { echo "[cluster.sh +$(elapsed)s] $*"; }
# The fixture in conftest.py shows everything from the "cluster.sh: ERROR:" line on as its skip reason.
die() { echo "cluster.sh: ERROR: $*" >&2; exit 1; }
tail_of() { [ -f "$1" ] && tail -n "${2:-15}" "$1" | sed 's/^/    /' || echo "    ($1 does not exist)"; }
# daemon_failed NAME RC: die with what the daemon said on stderr (config errors come before its log opens)
# and the last lines of its log
daemon_failed() {
  local out="$B/log/$1.stdout"
  die "$1 failed to start (exit $2)$([ -s "$out" ] && printf '; its stderr:\n%s' "$(tail_of "$out" 5)")
last lines of $B/log/$1.log:
$(tail_of "$B/log/$1.log")"
}

pid_of() { [ -s "$B/run/$1.pid" ] && cat "$B/run/$1.pid"; }
# running PID: exists and is not a zombie (a killed daemon is one until init reaps it, which here can
# take a while, and /proc still shows its name meanwhile)
running() {
  local st
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
# alive NAME: the recorded PID runs and still is that program (PIDs get reused).
alive() {
  local pid
  pid=$(pid_of "$1") || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && running "$pid"
}

wait_for() { # wait_for SECONDS WHAT LOGFILE CMD... ; on timeout: die with the log's last lines
  local t=$1 what=$2 logf=$3 i
  shift 3
  for ((i = 0; i < t * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what: not ready after ${t}s; last lines of $logf:
$(tail_of "$logf")"
}

node_ready() { sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated|completing'; }

all_alive() { # every daemon of a completed start still runs
  local d
  [ -f "$B/run/harness" ] || return 1
  for d in $DAEMONS; do alive "$d" || return 1; done
}

# cluster_up: all daemons run and slurmctld answers. Not the node's state: it is transient while jobs
# run (mixed, completing, planned when the backfill scheduler reserves it for a requeued job, ...).
# A busy slurmctld may miss one ping, so it gets a few seconds.
cluster_up() {
  local i
  all_alive || return 1
  for ((i = 0; i < 5; i++)); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && return 0
    sleep 1
  done
  return 1
}

# ---------------------------------------------------------------------------------------- stop
stop_group() { # SIGTERM the named daemons together, wait up to 10 s for them, then SIGKILL
  local d e pid left pids="" deadline=$((SECONDS + 10))
  for d in "$@"; do
    if alive "$d"; then
      # read once: the Slurm daemons delete their own PID files as they exit
      pid=$(pid_of "$d")
      kill -TERM "$pid" 2>/dev/null || true
      pids="$pids $d:$pid"
    fi
    rm -f "$B/run/$d.pid"
  done
  while :; do
    left=""
    for e in $pids; do running "${e#*:}" && left="$left $e"; done
    [ -n "$left" ] || break
    if ((SECONDS >= deadline)); then
      for e in $left; do
        log "${e%%:*}: pid ${e#*:} ignored SIGTERM for 10 s, sending SIGKILL"
        kill -KILL "${e#*:}" 2>/dev/null || true
      done
      break
    fi
    sleep 0.1
  done
  for e in $pids; do log "${e%%:*}: stopped pid ${e#*:}"; done
}

do_stop() {
  local i left
  # Cancel jobs first: a job's slurmstepd outlives slurmd otherwise.
  if alive slurmctld && alive slurmd; then
    if [ -n "$(squeue -h -o %A 2>/dev/null)" ]; then
      log "cancelling jobs: $(squeue -h -o %A | tr '\n' ' ')"
      scancel $(squeue -h -o %A) 2>/dev/null || true
      for ((i = 0; i < 60; i++)); do
        [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  # Only by recorded PID, never by name: the colleague's or the system's daemons are not ours.
  # All together: each takes ~2 s to exit, and nothing needs flushing in order (the next start wipes
  # the state and the accounting database anyway). One after the other took ~10 s.
  stop_group $DAEMONS
  rm -f "$B/run/harness"
  left=$(ps -eo pid=,comm= | awk '$2 == "slurmstepd" {print $1}' | tr '\n' ' ')
  [ -z "${left// /}" ] || log "WARNING: slurmstepd processes still running (not killed): $left"
  if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$B/etc/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
    if [ -e /etc/slurm/slurm.conf.before-tokenbench ]; then
      mv /etc/slurm/slurm.conf.before-tokenbench /etc/slurm/slurm.conf
    fi
  fi
}

# ---------------------------------------------------------------------------------------- install
install_packages() {
  local p missing="" rc=0 made_policy=0 err last
  for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  [ -n "$missing" ] || return 0
  command -v apt-get >/dev/null || die "packages missing ($missing ) and apt-get is not available to install them"
  log "installing:$missing"
  # Without policy-rc.d the packages' init scripts would start system-wide munge/mariadb/slurm daemons.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends $PKGS
  } > "$B/apt.log" 2>&1 || rc=$?
  [ "$made_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
  if [ "$rc" != 0 ]; then
    err=$(grep -E '^(E|Err):' "$B/apt.log" | tail -n 1 || true)
    last=$(tail -n 1 "$B/apt.log")
    [ -z "$err" ] || [ "$err" = "$last" ] || last="$err (last line: $last)"
    die "apt-get install of$missing failed (exit $rc): $last (full log: $B/apt.log)"
  fi
  log "installed"
}

# ---------------------------------------------------------------------------------------- start
write_slurm_conf() {
  local hw
  # CPUs/Boards/Sockets/Cores/Threads/RealMemory of this machine, as slurmd itself detects them.
  hw=$(slurmd -C 2>/dev/null | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
  [ -n "$hw" ] || die "'slurmd -C' printed nothing: $(slurmd -C 2>&1 | tail -n 1)"
  cat > "$B/etc/slurm.conf" <<EOF
# generated by tests/slurm/cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$B/munge/munge.socket.2,cred_expire=10
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$B/state/ctld
SlurmdSpoolDir=$B/state/d
SlurmctldPidFile=$B/run/slurmctld.pid
SlurmdPidFile=$B/run/slurmd.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups here: plain process-tree tracking, no task binding (so no cgroup.conf is needed)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# batch_sched_delay=0: schedule a batch job at submit time (default: up to 3 s later);
# short intervals so requeued / pending jobs are picked up within seconds
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# SIGTERM -> SIGKILL grace on cancel: submitit jobs ignore SIGTERM, so this is what a cancel costs
KillWait=3
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# slurmctld -> slurmdbd ignores AuthInfo=socket=; it takes the munge socket from here
AccountingStoragePass=$B/munge/munge.socket.2
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$B/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$B/munge/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$B/run/slurmdbd.pid
LogFile=$B/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  # slurmdbd refuses a config readable by others
  chmod 600 "$B/etc/slurmdbd.conf"
}

do_start() {
  local p d
  [ "$(id -u)" = 0 ] || die "not root (uid $(id -u)): the cluster's daemons must be started as root"
  if cluster_up; then
    echo "slurm ready: already up (SLURM_CONF=$SLURM_CONF)"
    return 0
  fi
  # All daemons running but slurmctld silent: another session may be using this cluster, so do not
  # restart it under its feet.
  if all_alive; then
    die "all daemons of $B run but slurmctld does not answer 'scontrol ping'; if nobody uses the cluster: $0 stop; last lines of $B/log/slurmctld.log:
$(tail_of "$B/log/slurmctld.log")"
  fi
  # A daemon died (the cluster is broken for every user anyway) or an earlier start failed half-way:
  # stop the rest, by their recorded PIDs, and start afresh.
  for d in $DAEMONS; do
    if alive "$d"; then log "the cluster is only half up; stopping it first"; do_stop; break; fi
  done
  for p in $CTLD_PORT $SLURMD_PORT $DBD_PORT $DB_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      die "port $p on 127.0.0.1 is in use by a program this script did not start (another SLURM or MariaDB?)"
    fi
  done
  install_packages

  # From here on a failure leaves nothing running: stop what was started, keep the logs.
  trap 'rc=$?; if [ $rc != 0 ]; then do_stop >/dev/null 2>&1 || true; fi' EXIT
  # a signal must reach the EXIT trap as a failure (bash runs it with status 0 after an untrapped INT/TERM/HUP)
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP

  rm -rf "$B/etc" "$B/state" "$B/log" "$B/run" "$B/munge" "$B/mysql"
  mkdir -p "$B/etc" "$B/state/ctld" "$B/state/d" "$B/log" "$B/run"
  # munged insists on a socket directory it owns, mode 0755
  install -d -o munge -g munge -m 0755 "$B/munge"
  echo "export SLURM_CONF=$SLURM_CONF" > "$B/slurm.env"

  # ---- munge
  if ! mungekey --create --keyfile="$B/munge/munge.key" >/dev/null 2>&1; then
    dd if=/dev/urandom of="$B/munge/munge.key" bs=1024 count=1 status=none
  fi
  chown munge:munge "$B/munge/munge.key"
  chmod 0400 "$B/munge/munge.key"
  runuser -u munge -- /usr/sbin/munged \
    --socket="$B/munge/munge.socket.2" --key-file="$B/munge/munge.key" \
    --log-file="$B/munge/munged.log" --pid-file="$B/munge/munged.pid" --seed-file="$B/munge/munged.seed" \
    > "$B/log/munged.stdout" 2>&1 || die "munged failed to start: $(tail -n 3 "$B/log/munged.stdout" "$B/munge/munged.log" 2>/dev/null)"
  wait_for 20 "munged" "$B/munge/munged.log" test -s "$B/munge/munged.pid"
  cp "$B/munge/munged.pid" "$B/run/munged.pid"
  wait_for 20 "munge socket" "$B/munge/munged.log" \
    sh -c "munge -n -S '$B/munge/munge.socket.2' | unmunge -S '$B/munge/munge.socket.2'"
  log "munged up (pid $(pid_of munged))"

  write_slurm_conf
  # Snakemake's SLURM plugin and srun inside jobs may lose SLURM_CONF: make the default path ours.
  mkdir -p /etc/slurm
  if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    mv /etc/slurm/slurm.conf /etc/slurm/slurm.conf.before-tokenbench
  fi
  ln -sfn "$B/etc/slurm.conf" /etc/slurm/slurm.conf

  # ---- MariaDB (private instance, own datadir and port) + slurmdbd
  install -d -o mysql -g mysql -m 0750 "$B/mysql"
  mariadb-install-db --no-defaults --user=mysql --datadir="$B/mysql/data" \
    --auth-root-authentication-method=socket --skip-test-db > "$B/log/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed; last lines of $B/log/mariadb-install.log:
$(tail_of "$B/log/mariadb-install.log")"
  # (slurmdbd logs "Database settings not recommended values: innodb_buffer_pool_size" for any size
  # below its GBs-for-production advice: harmless for a handful of test jobs)
  nohup /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$B/mysql/data" \
    --socket="$B/mysql/mysqld.sock" --pid-file="$B/mysql/mysqld.pid" \
    --port=$DB_PORT --bind-address=127.0.0.1 --log-error="$B/log/mariadb.err" \
    --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
    > "$B/log/mariadbd.stdout" 2>&1 < /dev/null &
  echo $! > "$B/run/mariadbd.pid"
  wait_for 60 "mariadbd" "$B/log/mariadb.err" \
    mariadb-admin --no-defaults --socket="$B/mysql/mysqld.sock" -uroot ping
  mariadb --no-defaults --socket="$B/mysql/mysqld.sock" -uroot <<EOF
CREATE DATABASE slurm_acct_db;
CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
  log "mariadbd up (pid $(pid_of mariadbd))"

  # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF
  slurmdbd > "$B/log/slurmdbd.stdout" 2>&1 || daemon_failed slurmdbd $?
  wait_for 60 "slurmdbd" "$B/log/slurmdbd.log" sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" > /dev/null
  log "slurmdbd up (pid $(pid_of slurmdbd))"

  # ---- slurmctld + slurmd
  slurmctld > "$B/log/slurmctld.stdout" 2>&1 || daemon_failed slurmctld $?
  wait_for 30 "slurmctld" "$B/log/slurmctld.log" sh -c "scontrol ping | grep -q 'is UP'"
  log "slurmctld up (pid $(pid_of slurmctld))"
  slurmd -N "$NODE" > "$B/log/slurmd.stdout" 2>&1 || daemon_failed slurmd $?
  wait_for 30 "slurmd" "$B/log/slurmd.log" test -s "$B/run/slurmd.pid"
  wait_for 60 "node $NODE idle" "$B/log/slurmd.log" node_ready
  log "slurmd up (pid $(pid_of slurmd)), node: $(sinfo -h -N -o '%N %T cpus=%c mem=%m')"

  # Smoke test of the path submitit takes (batch job running srun, state read back with sacct). It
  # also waits out the ~3 s until the scheduler's first pass after slurmctld starts, which a test's
  # first job would pay otherwise. (`sbatch --wait` polls too slowly: ~10 s.)
  local jid state="" i
  jid=$(sbatch --parsable -t 1 -o "$B/log/smoke.log" --wrap "srun true" 2>> "$B/log/smoke.log") \
    || die "smoke test: sbatch failed: $(tail -n 3 "$B/log/smoke.log")"
  for ((i = 0; i < 300; i++)); do
    state=$(sacct -n -X -j "$jid" -o State 2>> "$B/log/smoke.log" | tr -d ' ')
    case "$state" in PENDING | RUNNING | COMPLETING | "") sleep 0.2 ;; *) break ;; esac
  done
  [ "$state" = COMPLETED ] || die "smoke test: batch job $jid running 'srun true' ended as '${state:-still unknown after 60 s}'; $B/log/smoke.log: $(tail -n 3 "$B/log/smoke.log"); last lines of $B/log/slurmd.log:
$(tail_of "$B/log/slurmd.log")"
  log "smoke test ok (batch job + srun + sacct)"

  echo "tests/slurm/cluster.sh $(date -Is)" > "$B/run/harness"
  trap - EXIT INT TERM HUP
  echo "pids: $(for d in $DAEMONS; do printf '%s=%s ' "$d" "$(pid_of "$d")"; done)"
  echo "slurm ready: started (SLURM_CONF=$SLURM_CONF)"
}

do_status() {
  local d
  if cluster_up; then
    echo "up: $(sinfo -h -N -o '%N %T cpus=%c') (SLURM_CONF=$SLURM_CONF)"
    return 0
  fi
  if all_alive; then
    echo "degraded: all daemons run, but slurmctld does not answer 'scontrol ping'"
    return 1
  fi
  for d in $DAEMONS; do
    if alive "$d"; then echo "degraded: $(for d in $DAEMONS; do printf '%s=%s ' "$d" \
      "$(alive "$d" && echo up || echo down)"; done)"; return 1; fi
  done
  echo "down"
  return 1
}

case "${1:-}" in
  start | stop)
    mkdir -p "$B"
    # One start/stop at a time, also across concurrent pytest sessions. -o: the command runs without
    # the lock's fd, else every daemon started would inherit it and hold the lock for its lifetime.
    rc=0
    flock -o -w 600 -E 75 "$B/.cluster.lock" bash "${BASH_SOURCE[0]}" "locked-$1" || rc=$?
    [ "$rc" != 75 ] || die "another start/stop held $B/.cluster.lock for 600 s"
    exit "$rc"
    ;;
  locked-start) do_start ;;
  locked-stop)
    do_stop
    log "stopped"
    ;;
  status) do_status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
