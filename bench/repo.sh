#!/usr/bin/env bash
# Benchmark of `fenice repo` against restic, in one run on the same data:
# cold backup, incremental backup after ~2% of the files changed, restore,
# stored size and peak memory, to a local directory and to the S3 server.
#
#   bash bench/repo.sh [TENANTS]      # 26 tenants ≈ 1 GiB (default)
#   RUNS=5 bash bench/repo.sh         # cold backups and restores 5 times each (3 by default)
#
# Needs scripts/prerequisites.sh (restic, moto) and builds fenice in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

TENANTS=${1:-26}
# Cold backups and restores vary most between runs: each is measured RUNS
# times, the tools taking turns at going first, and the median kept.
RUNS=${RUNS:-3}
cargo build --release --quiet
FENICE=$(realpath "${CARGO_TARGET_DIR:-target}")/release/fenice
WORK=$(mktemp -d /tmp/fenice-bench.XXXXXX)
MOTO_PID=""
TMPFS=""
DISK=""
cleanup() {
  [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null || true
  [ -n "$DISK" ] && umount "$DISK" 2>/dev/null || true
  rm -rf "$WORK" ${TMPFS:+"$TMPFS"}
}
trap cleanup EXIT

export FENICE_PASSWORD=bench RESTIC_PASSWORD=bench
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
RESULTS=$WORK/results.tsv
: >"$RESULTS"

source bench/measure.sh

echo "generating $TENANTS tenants in $WORK/data"
python3 bench/gen_tenant_data.py "$WORK/data" --tenants "$TENANTS"
DATA_BYTES=$(du -sb "$WORK/data" | cut -f1)
# A restore to memory as well, where /dev/shm is a tmpfs with room for it.
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] &&
  [ "$(($(stat -f -c '%a * %S' /dev/shm)))" -gt "$((DATA_BYTES * 3))" ]; then
  TMPFS=$(mktemp -d /dev/shm/fenice-bench.XXXXXX)
fi
# A copy of the data per target, made before anything is measured, and nothing
# deleted on the disk until the end: ext4 skips the inodes deleted in the last
# minute (five, while their blocks are dirty) when it allocates new ones, so a
# restore that follows a delete of the tree spends most of its time scanning
# for free inodes, and more the sooner it follows: the tool that ran first lost.
cp -a "$WORK/data" "$WORK/data-s3"
mv "$WORK/data" "$WORK/data-local"
# Restores to the disk go to a fresh ext4 filesystem made for the run (a loop
# device over a sparse file), where the machine lets root mount one: on a
# filesystem without a journal, as this machine's root, ext4 passes over every
# inode freed in the last minutes when it allocates one, and the deletes of
# earlier runs made restores there 1.5-3x slower, the more so for whichever
# tool came first after them. Its inode tables are written now, not by a
# kernel thread while the backups are measured.
if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null &&
  truncate -s $((DATA_BYTES * 16)) "$WORK/restores.img" &&
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$WORK/restores.img" &&
  mkdir -p "$WORK/restores" && mount -o loop "$WORK/restores.img" "$WORK/restores"; then
  DISK=$WORK/restores
  echo "restores to the disk go to a fresh ext4 filesystem on $(findmnt -n -o SOURCE "$DISK")"
else
  echo "restores to the disk go to $WORK (no fresh filesystem could be mounted: not root, or no loop device)"
fi
sync

# settle [PATH…]: every measured run starts with the same memory. Each restore
# leaves 1 GB in the page cache, twice over through the loop device; once it had
# filled the machine's memory, every page a run wrote had to be taken back from
# it first: fenice's restore from the S3 server spent 3.6-5.1 s in the kernel
# instead of 1.1-1.7 s, restic's alike (2026-12-07, /usr/bin/time), and which
# tool came after how many restores weighed more than the tools. Where root may, the page
# cache is emptied before each run, then the run's input (absolute PATHs: the
# data set, a local repository) read back into it, as it was before.
settle() {
  sync
  [ -w /proc/sys/vm/drop_caches ] || return 0
  echo 1 >/proc/sys/vm/drop_caches
  local path
  for path in "$@"; do
    case $path in /*) find "$path" -type f -exec cat {} + >/dev/null ;; esac
  done
}

run_target() {
  local target=$1 fenice_repo=$2 restic_repo=$3 size_cmd=$4
  local data=$WORK/data-$target out=${DISK:-$WORK}/out-$target
  # Cold backups, each into a repository of its own, $RUNS times, the tools
  # taking turns at going first; the first pair's repositories go on.
  local i tool
  for i in $(seq "$RUNS"); do
    local suffix=""
    [ "$i" = 1 ] || suffix=-cold$i
    "$FENICE" repo --repo "$fenice_repo$suffix" init >/dev/null
    restic -r "$restic_repo$suffix" init --repository-version 2 >/dev/null
    for tool in $(in_turn "$i"); do
      settle "$data"
      case $tool in
        fenice) measure "$target cold backup" fenice "$FENICE" repo --repo "$fenice_repo$suffix" backup "$data" ;;
        restic) measure "$target cold backup" restic restic -r "$restic_repo$suffix" backup "$data" ;;
      esac
    done
  done
  python3 bench/gen_tenant_data.py "$data" --mutate >/dev/null
  settle "$data" "$fenice_repo"
  measure "$target incremental backup" fenice "$FENICE" repo --repo "$fenice_repo" backup "$data"
  settle "$data" "$restic_repo"
  measure "$target incremental backup" restic restic -r "$restic_repo" backup "$data"
  for i in $(seq "$RUNS"); do
    for tool in $(in_turn "$i"); do
      restore_with "$tool" "$target restore" "$fenice_repo" "$restic_repo" "$out-$tool-$i"
    done
    if [ "$target" = local ] && [ -n "$TMPFS" ]; then
      # Without a disk under it: what each tool does, not the filesystem's.
      for tool in $(in_turn "$i"); do
        restore_with "$tool" "$target restore to tmpfs" "$fenice_repo" "$restic_repo" "$TMPFS/out-$tool"
        rm -rf "$TMPFS/out-$tool"
      done
    fi
  done
  diff -rq "$data" "$out-fenice-1/data-$target" >/dev/null || { echo "fenice restore differs" >&2; exit 1; }
  diff -rq "$data" "$out-restic-1$data" >/dev/null || { echo "restic restore differs" >&2; exit 1; }
  printf '%s stored\tfenice\t%s\t0\n%s stored\trestic\t%s\t0\n' \
    "$target" "$($size_cmd fenice)" "$target" "$($size_cmd restic)" >>"$RESULTS"
}

# in_turn N: the two tools, the one that goes first taking turns with N.
in_turn() {
  if [ $(($1 % 2)) = 1 ]; then echo fenice restic; else echo restic fenice; fi
}

# restore_with TOOL LABEL FENICE_REPO RESTIC_REPO TARGET: one measured restore of the latest snapshot.
restore_with() {
  case $1 in fenice) settle "$3" ;; restic) settle "$4" ;; esac
  case $1 in
    fenice) measure "$2" fenice "$FENICE" repo --repo "$3" restore latest --target "$5" ;;
    restic) measure "$2" restic restic -r "$4" restore latest --target "$5" ;;
  esac
}

local_size() { du -sb "$WORK/$1-repo" | cut -f1; }
run_target local "$WORK/fenice-repo" "$WORK/restic-repo" local_size

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 100); do curl -s "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT FENICE_S3_PATH_STYLE=true
python3 - "$PORT" <<'PY'
import sys, urllib.request
for bucket in ("fenice-bench", "restic-bench"):
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/{bucket}", method="PUT"))
PY
s3_size() {
  python3 - "$PORT" "$1-bench" <<'PY'
import sys, urllib.request, re
total, token = 0, ""
while True:
    url = f"http://127.0.0.1:{sys.argv[1]}/{sys.argv[2]}?list-type=2" + (f"&continuation-token={token}" if token else "")
    body = urllib.request.urlopen(url).read().decode()
    total += sum(int(s) for s in re.findall(r"<Size>(\d+)</Size>", body))
    m = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", body)
    if not m:
        break
    token = urllib.parse.quote(m.group(1))
print(total)
PY
}
run_target s3 "s3://fenice-bench" "s3:http://127.0.0.1:$PORT/restic-bench" s3_size

python3 - "$RESULTS" "$DATA_BYTES" "$(nproc)" <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
data = int(sys.argv[2])
runs = {}
for label, tool, value, peak in rows:
    runs.setdefault(label, {}).setdefault(tool, []).append((float(value), int(peak)))
# The median time of a measure's runs (one, but for restores), the highest peak.
by = {
    label: {tool: (sorted(v for v, _ in got)[len(got) // 2], max(p for _, p in got)) for tool, got in tools.items()}
    for label, tools in runs.items()
}
print(f"\ndata set: {data / 2**30:.2f} GiB, {sys.argv[3]} cores\n")
print(f"| {'measure':<28} | {'fenice':>12} | {'restic':>12} | {'fenice/restic':>13} | {'peak MiB f/r':>13} |")
print(f"|{'-'*30}|{'-'*14}|{'-'*14}|{'-'*15}|{'-'*15}|")
for label, tools in by.items():
    (f, fp), (r, rp) = tools["fenice"], tools["restic"]
    if "stored" in label:
        print(f"| {label:<28} | {f/2**20:>8.1f} MiB | {r/2**20:>8.1f} MiB | {f/r:>12.3f}x | {'':>13} |")
    else:
        print(f"| {label + ' MB/s':<28} | {data/2**20/f:>12.1f} | {data/2**20/r:>12.1f} | {r/f:>12.2f}x | {fp/1024:>5.0f}/{rp/1024:<7.0f} |")
print("\nthroughput = data set size / wall time; fenice/restic > 1 means fenice is faster (stored: smaller is better)")
print("cold backups and restores: the median of each tool's runs, taking turns at going first; peak: the highest")
for label, tools in runs.items():
    if len(tools["fenice"]) > 1:
        shown = lambda tool: " ".join(f"{v:.2f}" for v, _ in tools[tool])
        print(f"  {label} seconds: fenice {shown('fenice')}; restic {shown('restic')}")
PY
