#!/usr/bin/env bash
# On a lent GPU machine, from the repository root, with .whl/ (bench/gpu/wheels.sh) carried:
# installs Ray and the rest into /tmp/site, then compares model-actor layouts on one GPU
# against the same ceiling and plain loop, in fp32, with --decode device and --decode host.
# Logs go to $OUT (or /tmp/out). At most 7 minutes of runs (410 s; machine start and the
# install not included). Extra arguments go to each run.
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/site
tar xJf .whl/ray-trim.tar.xz -C /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# Stray Ray processes of a run that timed out would hold the GPU. ("[r]aylet": a bare
# pattern would match this script's own command line.)
cleanup() { pkill -9 -f "[r]aylet" || true; pkill -9 -f "[g]cs_server" || true; }
trap cleanup EXIT
bench() {  # log name, time limit (s), bench/throughput.py arguments...
  local log=$1 limit=$2
  shift 2
  # A run past its limit keeps the lines it printed; the next run still goes.
  timeout "$limit" python3 bench/throughput.py --object-store-gb 8 --n 2048 "$@" 2>&1 | tee "$out/$log.log" \
    || echo "$log: stopped with status $? (124: past ${limit} s)" | tee -a "$out/$log.log"
  cleanup
}
# --decode device (issue 16): JPEG bytes travel, the model actor decodes and resizes them on the
# GPU; --decode host beside it (the read tasks decode, pixels travel), on the same machine.
bench lraspp_fp32_device 170 --precision fp32 --decode device --models lraspp_mobilenet_v3_large --layouts 1x1:2,4x0.25 "$@"
bench lraspp_fp32_host 110 --precision fp32 --decode host --models lraspp_mobilenet_v3_large --layouts 1x1:2 "$@"
bench deeplab_fp32_device 130 --precision fp32 --decode device --models deeplabv3_mobilenet_v3_large --layouts 1x1:2,4x0.25 "$@"
