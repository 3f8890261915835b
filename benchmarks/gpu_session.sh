#!/usr/bin/env bash
# Driver for one leased GPU machine (the `device` tool of this workplace): the GPU results in
# BENCHMARKS.md were produced by calling these phases in successive device calls.
#   setup          unpack data (.dev/pack/data.tar.xz) to /root/data, the wheels in .whl (gguf,
#                  sacrebleu, rouge-score and their pure-Python needs) to /root/site,
#                  copy the code to /root/repo (jobs run from there, so a re-synced tree cannot
#                  change code under a running job), put an `lte` command on PATH
#   sync           copy the code again (new jobs only)
#   bg NAME GPU CMD...  start CMD in its own session (outlives the device call) on GPU(s) GPU,
#                  log /root/res/logs/NAME.log, exit code /root/res/logs/NAME.rc (CMD runs in a
#                  subshell, so an `exit` inside it still leaves the .rc that waiting jobs poll for)
#   wait NAME... [--max S]  wait until the named jobs end (or S seconds)
#   status         one line per job (running / rc) and the last lines of each log
#   collect        tar the results (no weights) into $OUT/res.tgz
set -u
R=/root/res
export PYTHONPATH=/root/site:/root/repo/src PYTHONUNBUFFERED=1 PATH=/root/bin:$PATH
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
cmd=${1:-status}; shift || true
case "$cmd" in
  setup)
    mkdir -p /root/m /root/data /root/site /root/bin $R/logs
    [ -f .dev/pack/data.tar.xz ] && tar -C /root/data -xJf .dev/pack/data.tar.xz
    ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .whl/*.whl
    printf '#!/bin/sh\nexec python3 -m lte "$@"\n' > /root/bin/lte && chmod +x /root/bin/lte
    "$0" sync
    # preflight: every library the benchmark scripts import (a missing scorer once cost a run)
    python3 -c "import importlib.util as u; m=[n for n in ('gguf','sacrebleu','rouge_score','sklearn','scipy','matplotlib','accelerate','triton') if u.find_spec(n) is None]; print('MISSING python packages:', m) if m else print('preflight: all imports found')" ;;
  sync)
    mkdir -p /root/repo && rm -rf /root/repo/src /root/repo/benchmarks /root/repo/configs /root/repo/tests
    cp -r src benchmarks configs tests pyproject.toml /root/repo/ && echo "code synced" ;;
  bg)
    name=$1 gpu=$2; shift 2
    mkdir -p $R/logs; rm -f $R/logs/$name.rc
    (cd /root/repo && OMP_NUM_THREADS=${OMP:-4} CUDA_VISIBLE_DEVICES=$gpu setsid nohup bash -c "( $* ); echo \$? > $R/logs/$name.rc" \
       > $R/logs/$name.log 2>&1 < /dev/null &)
    echo "started $name on GPU $gpu" ;;
  wait)
    max=100000; names=()
    while [ $# -gt 0 ]; do if [ "$1" = --max ]; then max=$2; shift 2; else names+=("$1"); shift; fi; done
    t=0
    while [ $t -lt $max ]; do
      left=0; for n in "${names[@]}"; do [ -f $R/logs/$n.rc ] || left=1; done
      [ $left = 0 ] && break; sleep 5; t=$((t+5))
    done ;;
  status)
    for f in $R/logs/*.log; do
      [ -f "$f" ] || continue; n=$(basename $f .log)
      if [ -f $R/logs/$n.rc ]; then s="rc=$(cat $R/logs/$n.rc)"; else s=running; fi
      echo "== $n: $s"; tail -c 600 $f | tr '\r' '\n' | tail -n 4
    done
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; true ;;
  collect)
    tar -C /root -czf $OUT/res.tgz --exclude='*.pt' --exclude='*.safetensors' --exclude='*.bin' \
        --exclude='checkpoint*' --exclude='*.gguf' res && ls -la $OUT/res.tgz ;;
  *) echo "unknown phase $cmd"; exit 2 ;;
esac
