#!/usr/bin/env bash
# Side-by-side distribution benchmark: one artifact (default 256 MiB) to N receivers
# (default 16), all on 127.0.0.1, on this machine, in one run:
#   1. http   - one central nginx server, N curl receivers download from it
#   2. bt     - opentracker + one aria2c seeder, N aria2c leechers (1 MiB pieces)
#   3. mirage - `mirage bench swarm`: bootstrap peer, vendor (seed) and N receiver nodes
# For each: seconds from the moment the receivers start until the last receiver holds
# its copy, then every copy is checked with blake3 against the reference (verified/N);
# then the ratios and whether Mirage meets the target (mirage <= best of http, bt).
# Installs what it needs (apt-get; b3sum via cargo). Every process it starts is ended
# by its own pid on exit; every wait is bounded.
#
# Env: N (receivers, 16), ART_MIB (artifact MiB, 256), KEEP=1 keeps the work dir,
#      MIRAGE_BIN (default <repo>/target/release/mirage, built if missing),
#      BT_STAY=0 makes leechers leave the swarm as soon as they finish (default 1: they
#      keep seeding until the last one is done, like Mirage receivers keep serving),
#      HTTP_PORT (28080), TRK_PORT (26969), BT_BASE (26881: seeder, leechers BT_BASE+i),
#      PHASE_TIMEOUT (seconds per system, 900),
#      WARM=0 skips the warm-up (default 1: see the warm-up step below).
set -u
N=${N:-16}; ART_MIB=${ART_MIB:-256}; BT_STAY=${BT_STAY:-1}; WARM=${WARM:-1}
HTTP_PORT=${HTTP_PORT:-28080}; TRK_PORT=${TRK_PORT:-26969}; BT_BASE=${BT_BASE:-26881}
PHASE_TIMEOUT=${PHASE_TIMEOUT:-900}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MIRAGE_BIN=${MIRAGE_BIN:-$ROOT/target/release/mirage}
export PATH="$PATH:$HOME/.cargo/bin:/usr/sbin"

need() { command -v "$1" >/dev/null 2>&1; }
PKGS=(nginx aria2 opentracker mktorrent curl)
if ! need nginx || ! need aria2c || ! need opentracker || ! need mktorrent || ! need curl; then
  apt-get install -y "${PKGS[@]}" >/dev/null 2>&1 ||
  { apt-get update >/dev/null 2>&1 && apt-get install -y "${PKGS[@]}" >/dev/null 2>&1; } ||
  { echo "ERROR apt-get install ${PKGS[*]} failed" >&2; exit 1; }
fi
need b3sum || timeout 900 cargo install b3sum >/dev/null 2>&1 ||
  { echo "ERROR cargo install b3sum failed" >&2; exit 1; }
if need python3; then JSON=python3; elif need jq; then JSON=jq; else
  apt-get install -y jq >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y jq >/dev/null 2>&1; } ||
  { echo "ERROR neither python3 nor jq, and apt-get install jq failed" >&2; exit 1; }
  JSON=jq
fi
if [ ! -x "$MIRAGE_BIN" ] && [ "$MIRAGE_BIN" = "$ROOT/target/release/mirage" ]; then
  echo "building mirage (cargo build --release -p mirage-node --bin mirage)" >&2
  (cd "$ROOT" && timeout 3600 cargo build --release -p mirage-node --bin mirage >&2) || echo "WARN mirage build failed" >&2
fi

W=$(mktemp -d /tmp/swarm-bench.XXXXXX); chmod 755 "$W"
PIDS=()
cleanup() {
  local p alive
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for _ in $(seq 100); do alive=0; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1; done   # up to 10 s for graceful exit (timeout forwards TERM)
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  if [ "${KEEP:-0}" = 1 ]; then echo "work_dir $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
# wait for a list of pids, bounded by $1 seconds; returns 1 on timeout
waitall() { local lim=$1; shift; local t0=$SECONDS p
  for p in "$@"; do while kill -0 "$p" 2>/dev/null; do
    (( SECONDS - t0 > lim )) && return 1; sleep 0.05; done; done; return 0; }
# end the given pids (TERM, up to 10 s, then KILL)
stop() { local p; for p in "$@"; do kill "$p" 2>/dev/null; done
  waitall 10 "$@" || for p in "$@"; do kill -9 "$p" 2>/dev/null; done; }
# count files among "$@" whose blake3 equals $REF
verify() { local ok=0 f; for f in "$@"; do
  [ "$(b3sum --no-names "$f" 2>/dev/null)" = "$REF" ] && ok=$((ok+1)); done; echo $ok; }

echo "nproc $(nproc)"
echo "receivers $N"
echo "artifact_mib $ART_MIB"

# ---------- shared artifact (the same file for all three) ----------
A="$W/srv"; mkdir -p "$A"; chmod 755 "$A"; ART="$A/artifact.bin"
head -c $((ART_MIB * 1024 * 1024)) /dev/urandom > "$ART"; chmod 644 "$ART"
BYTES=$(stat -c %s "$ART")
REF=$(b3sum --no-names "$ART")
echo "artifact_blake3 $REF"

# ---------- warm-up (no clock) ----------
# A VM's never-touched memory is slow to touch the first time (here a first 4 GiB
# buffered write took 10 s of kernel time, the next one 0.7 s), and whichever system
# first fills the page cache after boot would pay for it: nginx, which runs first, took
# 7.9-8.1 s in a session's first run and 3.6-4.9 s afterwards. Filling and freeing as
# much page cache as the receivers' copies take, before any clock, puts the three on
# the same footing.
if [ "$WARM" = 1 ]; then
  dd if=/dev/zero of="$W/warm" bs=1M count=$((N * ART_MIB)) status=none 2>/dev/null
  rm -f "$W/warm"; sync
fi

declare -A SEC VER
# ---------- 1. central HTTP (nginx) ----------
NG="$W/nginx"; mkdir -p "$NG/logs"
cat > "$NG/nginx.conf" <<NGX
worker_processes $(nproc);
pid $NG/nginx.pid;
error_log $NG/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_timeout 5;
  client_body_temp_path $NG/cb; proxy_temp_path $NG/pt; fastcgi_temp_path $NG/ft;
  uwsgi_temp_path $NG/ut; scgi_temp_path $NG/st;
  server { listen 127.0.0.1:$HTTP_PORT; root $A; }
}
NGX
nginx -p "$NG" -e "$NG/logs/error.log" -c "$NG/nginx.conf" -g 'daemon off;' &
NGPID=$!; PIDS+=("$NGPID")
up=0
for _ in $(seq 100); do curl -s -o /dev/null -I "http://127.0.0.1:$HTTP_PORT/artifact.bin" && { up=1; break; }; sleep 0.1; done
if [ $up = 1 ]; then
  H="$W/http"; mkdir -p "$H"; CP=(); FILES=()
  t0=$(now)
  for i in $(seq 1 "$N"); do
    curl -s --max-time "$PHASE_TIMEOUT" -o "$H/r$i.bin" "http://127.0.0.1:$HTTP_PORT/artifact.bin" &
    CP+=($!); PIDS+=($!); FILES+=("$H/r$i.bin")
  done
  waitall $((PHASE_TIMEOUT + 20)) "${CP[@]}" || echo "WARN http timeout" >&2
  t1=$(now); SEC[http]=$(el "$t0" "$t1")
  stop "${CP[@]}"
  VER[http]=$(verify "${FILES[@]}")
  rm -rf "$H"
else
  echo "WARN nginx did not come up: $(tail -n 3 "$NG/logs/error.log" 2>/dev/null)" >&2
  SEC[http]=unavailable; VER[http]=0
fi
echo "http_${N}_s ${SEC[http]}"
echo "http_${N}_verified ${VER[http]}/$N"
kill -QUIT "$NGPID" 2>/dev/null; waitall 10 "$NGPID" || kill -9 "$NGPID" 2>/dev/null

# ---------- 2. BitTorrent (opentracker + aria2c) ----------
B="$W/bt"; mkdir -p "$B/trk" "$B/seed"; chmod 755 "$B/trk"
ln "$ART" "$B/seed/artifact.bin"
SEC[bt]=unavailable; VER[bt]=0
if mktorrent -a "http://127.0.0.1:$TRK_PORT/announce" -l 20 -o "$B/a.torrent" "$B/seed/artifact.bin" >/dev/null 2>&1; then
  IH=$(aria2c -S "$B/a.torrent" | awk '/Info Hash/{print $3}')
  IHURL=$(echo "$IH" | sed 's/../%&/g')
  # Debian's opentracker is built with a whitelist: admit only this info hash (path is inside its chroot)
  echo "$IH" > "$B/trk/whitelist"
  (cd "$B/trk" && exec opentracker -i 127.0.0.1 -p "$TRK_PORT" -d "$B/trk" -w whitelist) >"$B/trk.log" 2>&1 &
  PIDS+=($!)
  COMMON=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --file-allocation=none
          --summary-interval=0 --quiet=true --interface=127.0.0.1 --bt-tracker-interval=5
          --bt-max-peers=0)
  timeout "$PHASE_TIMEOUT" aria2c "${COMMON[@]}" -d "$B/seed" --listen-port="$BT_BASE" --check-integrity=true \
    --bt-seed-unverified=false --seed-ratio=0.0 "$B/a.torrent" >"$B/seed.log" 2>&1 &
  SEEDPID=$!; PIDS+=("$SEEDPID")
  seen=0
  for _ in $(seq 300); do   # up to 60 s for the seeder to hash and announce: it is ready before the clock starts
    curl -s "http://127.0.0.1:$TRK_PORT/scrape?info_hash=$IHURL" | grep -aq 'completei[1-9]' && { seen=1; break; }
    sleep 0.2
  done
  [ $seen = 1 ] || echo "WARN seeder not seen by tracker" >&2
  # each leecher writes <its dir>/.done when its copy is complete (hash-checked piece by piece)
  # shellcheck disable=SC2016  # $3 is expanded by the hook, not here
  printf '#!/bin/sh\ndate +%%s.%%N > "$(dirname "$3")/.done"\n' > "$B/hook.sh"; chmod 755 "$B/hook.sh"
  if [ "$BT_STAY" = 1 ]; then STAY=(--seed-ratio=0.0 --on-bt-download-complete="$B/hook.sh")
  else STAY=(--seed-time=0 --on-bt-download-complete="$B/hook.sh"); fi
  LP=(); FILES=()
  t0=$(now)
  for i in $(seq 1 "$N"); do
    mkdir -p "$B/l$i"
    timeout "$PHASE_TIMEOUT" aria2c "${COMMON[@]}" -d "$B/l$i" --listen-port=$((BT_BASE + i)) "${STAY[@]}" \
      "$B/a.torrent" >"$B/l$i.log" 2>&1 &
    LP+=($!); PIDS+=($!); FILES+=("$B/l$i/artifact.bin")
  done
  # done when every leecher has finished (marker) or died; bounded
  lim=$((SECONDS + PHASE_TIMEOUT + 20)); to=1
  while (( SECONDS < lim )); do
    pending=0
    for i in $(seq 1 "$N"); do
      [ -e "$B/l$i/.done" ] || ! kill -0 "${LP[i-1]}" 2>/dev/null || pending=1
    done
    [ $pending = 0 ] && { to=0; break; }
    sleep 0.05
  done
  t1=$(now)
  [ $to = 1 ] && echo "WARN bt timeout" >&2
  # last completion time: the latest marker (precise), else the moment the wait ended
  last=$(cat "$B"/l*/.done 2>/dev/null | sort -g | tail -n 1)
  done_n=$(find "$B" -maxdepth 2 -name .done | wc -l)
  if [ "$done_n" = "$N" ] && [ -n "$last" ]; then SEC[bt]=$(el "$t0" "$last"); else SEC[bt]=$(el "$t0" "$t1"); fi
  stop "${LP[@]}"   # graceful: aria2c flushes and closes its file
  VER[bt]=$(verify "${FILES[@]}")
  stop "$SEEDPID"
else
  echo "WARN mktorrent failed" >&2
fi
echo "bt_${N}_s ${SEC[bt]}"
echo "bt_${N}_verified ${VER[bt]}/$N"
rm -rf "$B"

# ---------- 3. Mirage swarm ----------
# `mirage bench swarm` starts its own bootstrap peer, vendor and N receivers on loopback,
# starts the clock when the vendor seeds, stops it when the last receiver holds a
# verified copy, and prints one JSON object as its last stdout line.
M="$W/mirage"; mkdir -p "$M/work"
SEC[mirage]=unavailable; VER[mirage]=unavailable; MVER_SRC=""
json_get() {  # json_get FILE KEY -> value of KEY in the last JSON line of FILE (empty if none)
  local line; line=$(grep -a '^[[:space:]]*{' "$1" | tail -n 1)
  [ -n "$line" ] || return 0
  if [ "$JSON" = python3 ]; then
    printf '%s' "$line" | python3 -c 'import json,sys
v=json.load(sys.stdin).get(sys.argv[1])
if v is not None and v != []: print("\n".join(map(str,v)) if isinstance(v,list) else v)' "$2" 2>/dev/null
  else
    # shellcheck disable=SC2016  # $k is a jq variable
    printf '%s' "$line" | jq -r --arg k "$2" '.[$k] // empty | if type=="array" then .[] else . end' 2>/dev/null
  fi
}
if [ -x "$MIRAGE_BIN" ]; then
  timeout --kill-after=15 "$PHASE_TIMEOUT" "$MIRAGE_BIN" bench swarm --receivers "$N" --artifact "$ART" \
    --work-dir "$M/work" --json >"$M/out.json" 2>"$M/err.log" &
  MPID=$!; PIDS+=("$MPID")
  waitall $((PHASE_TIMEOUT + 30)) "$MPID" || { echo "WARN mirage timeout" >&2; stop "$MPID"; }
  wait "$MPID" 2>/dev/null; mrc=$?
  s=$(json_get "$M/out.json" seconds); v=$(json_get "$M/out.json" verified)
  if [ "$mrc" = 0 ] && [ -n "$s" ]; then
    SEC[mirage]=$(awk -v s="$s" 'BEGIN{printf "%.2f", s}')
    VER[mirage]=${v:-0}; MVER_SRC=" (reported)"
    r=$(json_get "$M/out.json" receivers); b=$(json_get "$M/out.json" bytes); c=$(json_get "$M/out.json" chunk_size)
    [ -z "$r" ] || [ "$r" = "$N" ] || echo "WARN mirage reports $r receivers, asked for $N" >&2
    [ -z "$b" ] || [ "$b" = "$BYTES" ] || echo "WARN mirage reports $b bytes, artifact has $BYTES" >&2
    [ -n "$c" ] && echo "mirage_chunk_size $c"
    # if the command lists its receivers' copies ("copies": [paths]), check them here too
    mapfile -t COPIES < <(json_get "$M/out.json" copies | grep -v '^$')
    if [ "${#COPIES[@]}" -gt 0 ]; then VER[mirage]=$(verify "${COPIES[@]}"); MVER_SRC=""; fi
  else
    echo "WARN mirage bench swarm: exit $mrc; $(tail -n 2 "$M/err.log" | tr '\n' ' ')" >&2
  fi
else
  echo "WARN no mirage binary at $MIRAGE_BIN" >&2
fi
echo "mirage_${N}_s ${SEC[mirage]}"
if [ "${SEC[mirage]}" = unavailable ]; then echo "mirage_${N}_verified unavailable"
else echo "mirage_${N}_verified ${VER[mirage]}/$N$MVER_SRC"; fi
rm -rf "$M/work"

# ---------- 4. the transport floors (for reading the Mirage figure, not contenders) ----------
# `mirage bench transport`: the same bytes between the same number of processes, every
# peer serving any chunk from memory: no hashing, disk, DHT or swarm planning. Over
# libp2p (TCP, noise, yamux, the content protocol: the path of nodes without content
# lanes) and over content lanes (the path Mirage's chunks take). Mirage's time minus the
# lane floor is what Mirage's own work (verifying, writing) and the swarm's spreading of
# the chunks cost.
floor() { # floor NAME [flags]: prints the seconds or "unavailable"
  local name=$1 v=""; shift
  if [ -x "$MIRAGE_BIN" ]; then
    v=$(timeout --kill-after=15 "$PHASE_TIMEOUT" "$MIRAGE_BIN" bench transport --receivers "$N" \
      --mib $((BYTES / 1048576)) "$@" 2>"$W/$name.err" | awk -v k="transport_${N}_s" '$1 == k {print $2}')
    [ -n "$v" ] || echo "WARN mirage bench transport $*: $(tail -n 2 "$W/$name.err" | tr '\n' ' ')" >&2
  fi
  echo "${v:-unavailable}"
}
FLOOR=$(floor transport)
echo "transport_floor_${N}_s $FLOOR"
LANE_FLOOR=$(floor lanes --lanes)
echo "lane_floor_${N}_s $LANE_FLOOR"

# ---------- summary ----------
num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
ratio() { if num "$1" && num "$2" && awk -v b="$2" 'BEGIN{exit !(b>0)}'; then
  awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; else echo n/a; fi; }
# a system counts only if it ran and every receiver holds a verified copy
full() { num "${SEC[$1]}" && [ "${VER[$1]}" = "$N" ]; }
best=""; best_s=""
for k in http bt; do
  full "$k" || continue
  if [ -z "$best" ] || awk -v a="${SEC[$k]}" -v b="$best_s" 'BEGIN{exit !(a<b)}'; then best=$k; best_s=${SEC[$k]}; fi
done
echo
printf '%-8s %12s %10s\n' system seconds verified
for k in http bt mirage; do
  if num "${SEC[$k]}"; then vv="${VER[$k]}/$N"; else vv=-; fi
  printf '%-8s %12s %10s\n' "$k" "${SEC[$k]}" "$vv"
done
echo
echo "mirage/http $(ratio "${SEC[mirage]}" "${SEC[http]}")"
echo "mirage/bt $(ratio "${SEC[mirage]}" "${SEC[bt]}")"
echo "mirage/best $(ratio "${SEC[mirage]}" "$best_s")${best:+ (best: $best)}"
echo "transport_floor/http $(ratio "$FLOOR" "${SEC[http]}")"
echo "mirage/lane_floor $(ratio "${SEC[mirage]}" "$LANE_FLOOR")"
if ! full mirage; then verdict="missed (mirage unavailable or not all copies verified)"
elif [ -z "$best" ]; then verdict="missed (no baseline completed to compare with)"
elif awk -v a="${SEC[mirage]}" -v b="$best_s" 'BEGIN{exit !(a<=b)}'; then verdict=met
else verdict=missed; fi
echo "target (mirage <= best of http, bt): $verdict"
