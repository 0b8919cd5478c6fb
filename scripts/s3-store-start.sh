#!/bin/bash
# Bring up a real single-node Ceph cluster (1 mon, 1 OSD, 1 radosgw/beast) on loopback,
# from scratch on Debian 12 (bookworm), and print an S3 endpoint + credentials.
#
#   S3_DIR      state/log dir            (default ${TMPDIR:-/tmp}/efx-rgw; wiped on start)
#   S3_PORT     radosgw port on 127.0.0.1 (default 7480)
#   S3_BUCKET   bucket to pre-create      (default efx; empty = none)
#   S3_BACKEND  bluestore | memstore      (default bluestore on a sparse file)
#   S3_DISK_GB  size of the sparse bluestore file (default 20)
#   S3_ACCESS_KEY / S3_SECRET_KEY          (defaults below; test-only)
#
# Writes $S3_DIR/env (S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION, S3_BUCKET)
# for `source`. No mgr, no cephx (auth none): loopback CI use only.
# Also installs haproxy (the multi-node test's load balancer) when missing.
# efx's copy of the reference scripts in shared/ceph-rgw (measured: ~35 s on a fresh
# machine including the install, 7-12 s once installed).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

S3_DIR=${S3_DIR:-${TMPDIR:-/tmp}/efx-rgw}
S3_PORT=${S3_PORT:-7480}
S3_BUCKET=${S3_BUCKET-efx}
S3_BACKEND=${S3_BACKEND:-bluestore}
S3_DISK_GB=${S3_DISK_GB:-20}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-EFXTESTACCESSKEY0001}
S3_SECRET_KEY=${S3_SECRET_KEY:-efxTestSecretKey0000000000000000000000001}
S3_REGION=${S3_REGION:-us-east-1}
MON_PORT=${MON_PORT:-6789}
T0=$(date +%s.%N)
log() { printf '[s3-store-start %5ss] %s\n' "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')" "$*" >&2; }

# ---- install (Debian packages only) -------------------------------------------------------
need=()
for b in ceph-mon:ceph-mon ceph-osd:ceph-osd radosgw:radosgw ceph:ceph-common curl:curl haproxy:haproxy; do
  command -v "${b%%:*}" >/dev/null 2>&1 || need+=("${b#*:}")
done
if ((${#need[@]})); then
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  log "installed"
fi

# ---- refuse to clobber a running store ----------------------------------------------------
if [ -d "$S3_DIR/run" ]; then
  for f in "$S3_DIR"/run/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    if [ -e "/proc/$pid" ] && ! grep -q '^[^)]*) Z' "/proc/$pid/stat" 2>/dev/null; then
      echo "store already running (pid file $f); run s3-store-stop.sh first" >&2; exit 1
    fi
  done
fi
rm -rf "$S3_DIR"
mkdir -p "$S3_DIR"/{mon-a,osd-0,run,log,rgw}
D=$S3_DIR
FSID=$(cat /proc/sys/kernel/random/uuid)

write_conf() {
  cat > "$D/ceph.conf" <<CONF
[global]
fsid = $FSID
mon host = v1:127.0.0.1:$MON_PORT
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
ms bind ipv4 = true
ms bind ipv6 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
mon warn on msgr2 not enabled = false
osd crush chooseleaf type = 0
mon max pg per osd = 1000
paxos propose interval = 0.05
paxos min wait = 0.01
run dir = $D/run
admin socket = $D/run/\$cluster-\$name.asok
pid file = $D/run/\$name.pid
log file = $D/log/\$name.log
keyring = $D/keyring
[mon.a]
mon data = $D/mon-a
[osd]
osd data = $D/osd-\$id
# placement is done by this script: the OSD's own crush/class update at boot can race the
# monmap and fail with 'wrong fsid' (seen once in 3 starts)
osd crush update on start = false
osd class update on start = false
osd objectstore = $1
osd memory target = 1073741824
memstore device bytes = $((S3_DISK_GB * 1073741824))
bluestore block path = $D/osd-\$id.block
bluestore block create = true
bluestore block size = $((S3_DISK_GB * 1073741824))
bluestore block db create = false
bluestore block wal create = false
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$S3_PORT
rgw data = $D/rgw
rgw thread pool size = 128
CONF
}
write_conf "$S3_BACKEND"
export CEPH_CONF=$D/ceph.conf

# ---- mon -----------------------------------------------------------------------------------
printf '[mon.]\n\tkey = %s\n\tcaps mon = "allow *"\n' "$(ceph-authtool --gen-print-key)" > "$D/keyring"
monmaptool --create --addv a "[v1:127.0.0.1:$MON_PORT]" --fsid "$FSID" "$D/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring" 2>>"$D/log/setup.log"
ceph-mon -i a 2>>"$D/log/setup.log"
log "mon up (pid $(cat "$D/run/mon.a.pid"))"

# ---- osd -----------------------------------------------------------------------------------
OSDUUID=$(cat /proc/sys/kernel/random/uuid)
ceph --connect-timeout 30 osd new "$OSDUUID" >/dev/null
if ! ceph-osd -i 0 --mkfs --osd-uuid "$OSDUUID" >>"$D/log/setup.log" 2>&1; then
  if [ "$S3_BACKEND" = bluestore ]; then
    log "bluestore mkfs failed (see $D/log/setup.log); falling back to memstore"
    S3_BACKEND=memstore; rm -rf "$D/osd-0" "$D/osd-0.block"; mkdir -p "$D/osd-0"; write_conf memstore
    ceph-osd -i 0 --mkfs --osd-uuid "$OSDUUID" >>"$D/log/setup.log" 2>&1
  else
    echo "ceph-osd mkfs failed, see $D/log/setup.log" >&2; exit 1
  fi
fi
ceph osd crush add osd.0 1.0 root=default >/dev/null 2>&1
ceph-osd -i 0 2>>"$D/log/setup.log"
for i in $(seq 1 120); do
  ceph osd dump 2>/dev/null | grep -q '^osd.0 up' && break
  [ "$i" = 120 ] && { echo "osd.0 did not come up, see $D/log/osd.0.log" >&2; exit 1; }
  sleep 0.25
done
log "osd up ($S3_BACKEND, pid $(cat "$D/run/osd.0.pid"))"

# ---- pre-create the rgw pools in one go (rgw would create them lazily, ~1-3 s each) --------
POOLS=".rgw.root default.rgw.control default.rgw.meta default.rgw.log default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec"
for p in $POOLS; do
  ceph osd pool create "$p" 8 8 >/dev/null 2>&1 && ceph osd pool application enable "$p" rgw >/dev/null 2>&1 &
done
wait
log "pools created"

# ---- radosgw -------------------------------------------------------------------------------
radosgw -n client.rgw.a 2>>"$D/log/setup.log"
for i in $(seq 1 240); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/" 2>/dev/null)" = 200 ] && break
  [ "$i" = 240 ] && { echo "radosgw did not answer, see $D/log/client.rgw.a.log" >&2; exit 1; }
  sleep 0.25
done
log "radosgw up (pid $(cat "$D/run/client.rgw.a.pid")) on 127.0.0.1:$S3_PORT"

radosgw-admin user create --uid=efx --display-name=efx \
  --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
# curl 7.88 does not add x-amz-content-sha256 itself; rgw then rejects the signature
SIG=(--aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
if [ -n "$S3_BUCKET" ]; then
  code=$(curl -s -o "$D/log/mkbucket.out" -w '%{http_code}' "${SIG[@]}" -X PUT "$S3_ENDPOINT/$S3_BUCKET")
  [ "$code" = 200 ] || { echo "create bucket $S3_BUCKET: HTTP $code $(cat "$D/log/mkbucket.out")" >&2; exit 1; }
  # smoke test: one signed PUT + GET + DELETE
  printf 'hello from ceph rgw\n' > "$D/log/smoke.txt"
  code=$(curl -s -o /dev/null -w '%{http_code}' "${SIG[@]}" -T "$D/log/smoke.txt" "$S3_ENDPOINT/$S3_BUCKET/.smoke")
  [ "$code" = 200 ] || { echo "smoke PUT: HTTP $code" >&2; exit 1; }
  log "first signed PUT ok"
  curl -sf "${SIG[@]}" "$S3_ENDPOINT/$S3_BUCKET/.smoke" | cmp -s - "$D/log/smoke.txt" || { echo "smoke GET mismatch" >&2; exit 1; }
  curl -sf "${SIG[@]}" -X DELETE "$S3_ENDPOINT/$S3_BUCKET/.smoke" >/dev/null
fi

cat > "$D/env" <<ENV
S3_ENDPOINT=$S3_ENDPOINT
S3_ACCESS_KEY=$S3_ACCESS_KEY
S3_SECRET_KEY=$S3_SECRET_KEY
S3_REGION=$S3_REGION
S3_BUCKET=$S3_BUCKET
S3_DIR=$D
ENV
log "ready"
echo "S3_ENDPOINT=$S3_ENDPOINT"
echo "S3_ACCESS_KEY=$S3_ACCESS_KEY"
echo "S3_SECRET_KEY=$S3_SECRET_KEY"
echo "S3_REGION=$S3_REGION"
echo "S3_BUCKET=$S3_BUCKET"
echo "# path-style addressing; env file: $D/env ; stop: $(dirname "$(readlink -f "$0")")/s3-store-stop.sh"
