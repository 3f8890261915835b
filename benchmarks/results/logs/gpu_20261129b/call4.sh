#!/bin/bash
# session 12, GPU call 4: the committed kernel code's full table (batch 1 and 8, sparsity 0-0.9, full-shape check at
# 1/3/8/16 tokens) and the lean-loop e2e at 50% and 80%, as the issue's deliverables.
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u; git log --oneline -1 2>/dev/null
timeout 240 python benchmarks/kernel_bench.py --out $OUT/kernel_h200_s12.json > $OUT/kernel_final.log 2>&1
echo "kernel_bench rc $?"; date -u
python - $OUT/kernel_h200_s12.json <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r["batch"], r["sparsity"], r["union_sparsity"], "kernel", r["kernel_us"], "dense", r["dense_us"], "isel", r["index_select_us"],
          "x", r["speedup_vs_dense"], "TB/s", r["bandwidth_TBps"], "fastest", r["fastest_variant"], r["fastest_us"])
PY
timeout 330 python benchmarks/e2e_gpu.py --setups static+loop --sparsities 0.5,0.8 --repeats 3 \
  --out $OUT/e2e_h200_s12_final.json > $OUT/e2e_final.log 2>&1
echo "e2e rc $?"; date -u; grep -E "^\[e2e\]|^\[bench\]" $OUT/e2e_final.log | tail -12
