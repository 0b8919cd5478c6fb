#!/bin/bash
# Stop the store started by s3-store-start.sh (by its pid files only) and delete its data.
#   S3_DIR  (default ${TMPDIR:-/tmp}/efx-rgw)   KEEP=1 keeps the data dir (logs, bluestore file).
set -uo pipefail
S3_DIR=${S3_DIR:-${TMPDIR:-/tmp}/efx-rgw}
RUN=$S3_DIR/run
# PID 1 here may not reap orphans: a dead daemon can linger as a zombie, which kill -0 sees
alive() { [ -e "/proc/$1" ] && ! grep -q '^[^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
stop() { # $1 = pid file; TERM, wait up to $2 s, then KILL
  local f=$RUN/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 $(($2 * 10))); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { kill -KILL "$pid" 2>/dev/null; echo "killed $1 ($pid)" >&2; }
  fi
  rm -f "$f"
}
stop client.rgw.a.pid 10
stop osd.0.pid 10   # stop the OSD while the mon is still up, or it waits 5 s for it
stop mon.a.pid 10
if [ "${KEEP:-0}" != 1 ]; then rm -rf "$S3_DIR"; fi
echo "store stopped"
