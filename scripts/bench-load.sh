#!/usr/bin/env bash
# bench-load.sh: load speed and restart time of a dram node, on 127.0.0.1 only.
#
# Measures, in one run:
#  1. Download throughput of a database of FILES files of 1 MiB (default 1,000: ~1 GiB)
#     from an s3s-fs server into a dram node (`db add --wait`, fresh data_dir each run),
#     against `rclone copy` of the same prefix from the same server (tuned:
#     --transfers 16 --checkers 16 --multi-thread-streams 4). Each tool runs RUNS times
#     (default 2), alternating; every run and the best are printed, with the CPU seconds
#     s3s-fs and the dram node spent. "dram" is the wall time of `db add --wait` (which
#     polls every 200 ms); "dram-srv" is the node's ready_ms - created_ms.
#  2. Restart-to-serving time with SHARDS ready shards (default 1,000 tiny files
#     shards/<i>/f): load once, then RESTARTS times (default 3) SIGTERM the node, start
#     it again and time from process start until GET /v1/databases/<name> says
#     "state":"ready" (polled every ~10 ms). Every restart and the median are printed.
#
# Run from anywhere:  scripts/bench-load.sh          (FILES=200 RUNS=1 … to shorten)
# Needs: cargo, ~/.cargo/bin/s3s-fs (cargo install s3s-fs@0.14.1 --locked --features
# binary), rclone (apt-get install -y rclone), curl, jq, python3. Uses ~2 GB in a temp
# dir under $TMPDIR (/tmp), removed at exit with every process started (KEEP=1 keeps it).
set -euo pipefail

FILES=${FILES:-1000} RUNS=${RUNS:-2} SHARDS=${SHARDS:-1000} RESTARTS=${RESTARTS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRAM=$ROOT/target/release/dram
S3S=${S3S_FS:-$HOME/.cargo/bin/s3s-fs}
KEY=benchkey SECRET=benchsecret BUCKET=bench
CLK=$(getconf CLK_TCK)

T=$(mktemp -d "${TMPDIR:-/tmp}/dram-bench.XXXXXX")
S3PID= NODE_PID=
cleanup() { # ends only the processes this script started, by pid
  local pid
  for pid in $NODE_PID $S3PID; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "# $*" >&2; }
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_secs() { awk -v clk="$CLK" '{ printf "%.2f", ($14 + $15) / clk }' "/proc/$1/stat"; }
wait_http() { # URL: poll until it answers, at most ~10 s
  local i
  for ((i = 0; i < 1000; i++)); do curl -sf -o /dev/null "$1" && return 0; sleep 0.01; done
  echo "no answer from $1" >&2; return 1
}

# --- build, tools ---------------------------------------------------------------
command -v rclone >/dev/null || { log "installing rclone"; apt-get install -y rclone >/dev/null; }
if [[ ! -x $DRAM ]] || [[ -n $(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$DRAM" | head -1) ]]; then
  log "building release"; (cd "$ROOT" && cargo build --release --quiet)
fi
[[ -x $S3S ]] || { echo "s3s-fs not found at $S3S" >&2; exit 1; }

# --- s3s-fs ---------------------------------------------------------------------
S3PORT=$(free_port)
mkdir -p "$T/s3/$BUCKET"
"$S3S" --host 127.0.0.1 --port "$S3PORT" --access-key $KEY --secret-key $SECRET "$T/s3" >"$T/s3s.log" 2>&1 &
S3PID=$!
for ((i = 0; i < 500; i++)); do curl -s -o /dev/null "http://127.0.0.1:$S3PORT/" && break; sleep 0.01; done

# write_config FILE DATA_DIR: a node config pointing at the bench bucket
write_config() {
  cat >"$1" <<EOF
[node]
data_dir = "$2"
http_listen = "127.0.0.1:$(free_port)"
[store]
url = "s3://$BUCKET"
endpoint = "http://127.0.0.1:$S3PORT"
region = "us-east-1"
allow_http = true
access_key_id = "$KEY"
secret_access_key = "$SECRET"
[cluster]
gossip_listen = "127.0.0.1:$(free_port)"
EOF
}
node_url() { echo "http://$(awk -F'"' '/^http_listen/ { print $2 }' "$1")"; }
start_node() { # CONFIG LOG
  "$DRAM" serve --config "$1" >>"$2" 2>&1 &
  NODE_PID=$!
}
stop_node() { kill -TERM "$NODE_PID" 2>/dev/null || true; wait "$NODE_PID" 2>/dev/null || true; NODE_PID=; }

# --- data: FILES x 1 MiB in 10 shards; SHARDS tiny shards ------------------------
log "generating data in $T"
for ((i = 0; i < FILES; i++)); do
  d=$T/big/shards/$((i % 10)); mkdir -p "$d"; head -c 1048576 /dev/urandom >"$d/f$i"
done
for ((i = 0; i < SHARDS; i++)); do mkdir -p "$T/many/shards/$i"; echo "shard $i" >"$T/many/shards/$i/f"; done
BYTES=$(find "$T/big" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
write_config "$T/publish.toml" "$T/unused"
log "publishing via dram to s3s-fs"
"$DRAM" publish "$T/big" big --config "$T/publish.toml" >/dev/null
"$DRAM" publish "$T/many" many --config "$T/publish.toml" >/dev/null
rm -rf "$T/big" "$T/unused"

# --- 1. throughput --------------------------------------------------------------
export RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other RCLONE_CONFIG_B_REGION=us-east-1 \
  RCLONE_CONFIG_B_ENDPOINT=http://127.0.0.1:$S3PORT RCLONE_CONFIG_B_FORCE_PATH_STYLE=true \
  RCLONE_CONFIG_B_ACCESS_KEY_ID=$KEY RCLONE_CONFIG_B_SECRET_ACCESS_KEY=$SECRET
RESULTS=() # "tool seconds s3s_cpu tool_cpu"
run_rclone() {
  local c0 t0 t1 c1
  c0=$(cpu_secs "$S3PID"); t0=$(now)
  env -u AWS_CA_BUNDLE rclone copy "b:$BUCKET/big/" "$T/rc" \
    --transfers 16 --checkers 16 --multi-thread-streams 4 2>>"$T/rclone.log"
  t1=$(now); c1=$(cpu_secs "$S3PID")
  local n; n=$(find "$T/rc/shards" -type f | wc -l)
  [[ $n == "$FILES" ]] || { echo "rclone copied $n files, not $FILES" >&2; exit 1; }
  RESULTS+=("rclone $(sub "$t1" "$t0") $(sub "$c1" "$c0") -")
  rm -rf "$T/rc"
}
run_dram() { # N
  local cfg=$T/load$1.toml c0 t0 t1 c1 n0 n1
  write_config "$cfg" "$T/load$1"
  start_node "$cfg" "$T/node-load$1.log"; wait_http "$(node_url "$cfg")/v1/health"
  c0=$(cpu_secs "$S3PID"); n0=$(cpu_secs "$NODE_PID"); t0=$(now)
  "$DRAM" db add big big --wait --node "$(node_url "$cfg")" >/dev/null
  t1=$(now); c1=$(cpu_secs "$S3PID"); n1=$(cpu_secs "$NODE_PID")
  local info; info=$(curl -sf "$(node_url "$cfg")/v1/databases/big")
  [[ $(jq -r .state <<<"$info") == ready ]] || { echo "dram run $1: $info" >&2; exit 1; }
  RESULTS+=("dram $(sub "$t1" "$t0") $(sub "$c1" "$c0") $(sub "$n1" "$n0")")
  # the node's own view, without the 200 ms polling of `db add --wait`
  RESULTS+=("dram-srv $(jq -r '(.ready_ms - .created_ms) / 1000' <<<"$info") - -")
  stop_node; rm -rf "$T/load$1"
}
for ((r = 1; r <= RUNS; r++)); do
  log "run $r/$RUNS: rclone"; run_rclone
  log "run $r/$RUNS: dram"; run_dram "$r"
done

echo
echo "Load of $FILES files, $BYTES bytes, from s3s-fs on 127.0.0.1 ($(nproc) cores)"
printf '%-8s %9s %9s %13s %13s\n' tool seconds MB/s s3s-fs-cpu-s tool-cpu-s
for row in "${RESULTS[@]}"; do
  read -r tool secs s3cpu tcpu <<<"$row"
  printf '%-8s %9s %9.1f %13s %13s\n' "$tool" "$secs" "$(awk -v b="$BYTES" -v s="$secs" 'BEGIN { print b / 1e6 / s }')" "$s3cpu" "$tcpu"
done
best() { printf '%s\n' "${RESULTS[@]}" | awk -v t="$1" '$1 == t { print $2 }' | sort -g | head -1; }
BR=$(best rclone) BD=$(best dram) BS=$(best dram-srv)
awk -v b="$BYTES" -v r="$BR" -v d="$BD" -v s="$BS" 'BEGIN {
  printf "best: rclone %.3f s (%.1f MB/s), dram %.3f s (%.1f MB/s), dram-srv %.3f s (%.1f MB/s)\n",
    r, b / 1e6 / r, d, b / 1e6 / d, s, b / 1e6 / s
  printf "dram/rclone throughput ratio: %.2f wall (db add --wait), %.2f node-side (ready_ms - created_ms)\n", r / d, r / s }'

# --- 2. restart to serving with SHARDS ready shards ------------------------------
echo
CFG=$T/restart.toml; write_config "$CFG" "$T/restart"; URL=$(node_url "$CFG")
start_node "$CFG" "$T/node-restart.log"; wait_http "$URL/v1/health"
t0=$(now); "$DRAM" db add many many --wait --node "$URL" >/dev/null; t1=$(now)
echo "Initial load of $SHARDS shards of one tiny file: $(sub "$t1" "$t0") s"
TIMES=()
for ((r = 1; r <= RESTARTS; r++)); do
  stop_node
  t0=$(now); start_node "$CFG" "$T/node-restart.log"; ok=0
  for ((i = 0; i < 3000; i++)); do # ~30 s at most
    state=$(curl -s "$URL/v1/databases/many" 2>/dev/null | jq -r '.state // empty' 2>/dev/null || true)
    if [[ $state == ready ]]; then ok=1; break; fi
    sleep 0.01
  done
  t1=$(now)
  [[ $ok == 1 ]] || { echo "restart $r: not ready after 30 s" >&2; exit 1; }
  ms=$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%d", (a - b) * 1000 }')
  TIMES+=("$ms"); echo "restart $r: ready after $ms ms"
done
MED=$(printf '%s\n' "${TIMES[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
echo "restart-to-serving with $SHARDS ready shards: median $MED ms (of $RESTARTS)"
stop_node
