#!/bin/bash
# session 12, GPU call 1: persistent-kernel and prefetch_down sweep at 50% and 0%, then e2e (lean loop) at 50%
# with the fastest configuration at 50%.
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
timeout 300 python benchmarks/kernel_bench.py --batches 1 --sparsities 0.5 0.0 --check-batches 1 --ir-report \
  --fused-tries 2048/4096/4096/4/16 --fused-configs '[{"persistent":1,"persistent_f":1,"persistent_warps":4},{"persistent":1,"persistent_f":1,"persistent_warps":8},{"persistent":1,"persistent_f":2,"persistent_warps":4},{"persistent":1,"persistent_f":2,"persistent_warps":8},{"persistent":1,"persistent_f":4,"persistent_warps":4},{"persistent":1,"persistent_f":4,"persistent_warps":8},{"persistent":1,"persistent_f":8,"persistent_warps":4},{"persistent":1,"persistent_f":8,"persistent_warps":8},{"persistent":2,"persistent_f":1,"persistent_warps":4},{"persistent":2,"persistent_f":1,"persistent_warps":8},{"persistent":2,"persistent_f":2,"persistent_warps":4},{"persistent":2,"persistent_f":2,"persistent_warps":8},{"persistent":2,"persistent_f":4,"persistent_warps":4},{"persistent":2,"persistent_f":4,"persistent_warps":8},{"persistent":2,"persistent_f":8,"persistent_warps":4},{"persistent":2,"persistent_f":8,"persistent_warps":8},{"persistent":4,"persistent_f":1,"persistent_warps":4},{"persistent":4,"persistent_f":1,"persistent_warps":8},{"persistent":4,"persistent_f":2,"persistent_warps":4},{"persistent":4,"persistent_f":2,"persistent_warps":8},{"persistent":4,"persistent_f":4,"persistent_warps":4},{"persistent":4,"persistent_f":4,"persistent_warps":8},{"persistent":4,"persistent_f":8,"persistent_warps":4},{"persistent":4,"persistent_f":8,"persistent_warps":8},{"persistent":1,"persistent_f":4,"persistent_warps":16},{"persistent":1,"persistent_f":8,"persistent_warps":16},{"persistent":2,"persistent_f":2,"persistent_warps":16},{"prefetch_down":1,"block_f":8,"num_warps":8},{"prefetch_down":1,"block_f":8},{"prefetch_down":1,"block_f":4,"num_warps":8},{"prefetch_down":1,"block_f":8,"num_warps":8,"router_first":1,"block_k":4096}]' \
  --out $OUT/kernel_h200_s12_persistent.json > $OUT/kernel_persistent.log 2>&1
echo "kernel_bench rc $?"; date -u
grep -v '^ir ' $OUT/kernel_persistent.log | tail -n 12 | cut -c1-3000
grep '^ir ' $OUT/kernel_persistent.log | grep persistent | head -40
BEST=$(python -c "import json,sys; r=[r for r in json.load(open(sys.argv[1])) if r['sparsity']==0.5][0]; print(json.dumps(r['fastest_config'] or {}))" $OUT/kernel_h200_s12_persistent.json)
echo "BEST=$BEST"
LTE_TRITON_CONFIG="$BEST" timeout 250 python benchmarks/e2e_gpu.py --setups static+loop --sparsities 0.5 --repeats 3 \
  --out $OUT/e2e_h200_s12_best.json > $OUT/e2e_best.log 2>&1
echo "e2e rc $?"; date -u; tail -c 1500 $OUT/e2e_best.log
