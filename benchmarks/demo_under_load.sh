#!/bin/bash
# The whole demo under a fixed background load (docs/demo.md, "On a busy machine"): two spinning processes
# beside `MMLN_QUIET=1 python -m mmln.demo --strict` in a fresh demo dir under OUT (a new folder:
# an existing one is refused); the log, the 1-minute
# load average each minute, and the wall time land in OUT.
#   benchmarks/demo_under_load.sh OUT                      # mmln's default (OMP_WAIT_POLICY=PASSIVE)
#   benchmarks/demo_under_load.sh OUT OMP_WAIT_POLICY=     # libgomp's own policy, as before mmln set PASSIVE
# Run it on a machine with nothing else running, one run at a time.
set -u
out=$1; shift
cd "$(dirname "$0")/.." && export PYTHONPATH=$PWD MMLN_QUIET=1
if [ -e "$out" ]; then echo "demo_under_load.sh: $out exists: name a new folder (nothing was touched)" >&2; exit 2; fi
mkdir -p "$out"
python -c 'while 1: pass' & b1=$!
python -c 'while 1: pass' & b2=$!
(while sleep 60; do echo "$(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)"; done) > "$out/load.txt" & lp=$!
trap 'kill $b1 $b2 $lp 2>/dev/null' EXIT
t0=$(date +%s)
echo "start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg) env: $*" > "$out/time.txt"
env "$@" MMLN_DEMO_DIR="$out/demo" .venv/bin/python -m mmln.demo --strict > "$out/log.txt" 2>&1
rc=$?
echo "end $(date +%T) rc=$rc seconds=$(($(date +%s) - t0)) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/time.txt"
cat "$out/time.txt"
