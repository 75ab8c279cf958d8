# Sourced by the benchmarks. measure LABEL TOOL COMMAND…: runs the command,
# appends "LABEL<TAB>TOOL<TAB>seconds<TAB>peak RSS in KiB (it and its
# children)" to $RESULTS, and stops the benchmark if the command fails.
measure() {
  local label=$1 tool=$2
  shift 2
  python3 - "$label" "$tool" "$@" >>"$RESULTS" <<'PY'
import resource, subprocess, sys, time
label, tool, command = sys.argv[1], sys.argv[2], sys.argv[3:]
start = time.monotonic()
done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.monotonic() - start
if done.returncode != 0:
    sys.stderr.write(done.stderr.decode())
    sys.exit(f"{label} {tool} failed")
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{label}\t{tool}\t{elapsed:.2f}\t{peak}")
PY
}
