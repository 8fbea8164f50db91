#!/usr/bin/env bash
# Start-and-exit stress test of 2-process DDP on CPU (gloo): the README command, N times in a row.
#   bash benchmarks/ddp_stress.sh [N=10]
# Prints one line per run and fails on the first non-zero exit code.
set -u
n=${1:-10}
out=$(mktemp -d)
for i in $(seq 1 "$n"); do
  start=$(date +%s)
  python -m wcl fit --config configs/quickstart.yaml --trainer.accelerator cpu --trainer.devices 2 \
    --trainer.strategy ddp --trainer.max_steps 5 --trainer.enable_progress_bar false \
    --trainer.default_root_dir "$out" --trainer.logger.init_args.save_dir "$out" >"$out/run$i.log" 2>&1
  rc=$?
  echo "run $i: exit $rc, $(( $(date +%s) - start )) s"
  if [ "$rc" -ne 0 ]; then tail -20 "$out/run$i.log"; exit "$rc"; fi
done
echo "all $n runs exited 0"
