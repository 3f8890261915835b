#!/bin/bash
# session 12, GPU call 2: register caps and 16-warp small tiles (fused kernel) at 50%, 100% and 0%; e2e at 50%
# with the fastest configuration if it is not the default; the GPU tests of the kernel code.
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
timeout 240 python benchmarks/kernel_bench.py --batches 1 --sparsities 0.5 1.0 0.0 --check-batches 1 --ir-report \
  --fused-tries 256/256/4096/16/16,512/512/4096/16/16,1024/1024/4096/16/16,512/1024/4096/16/16,256/512/4096/16/8,512/512/4096/16/8,1024/1024/4096/16/8,512/512/4096/8/16,256/256/4096/8/16,2048/4096/4096/4/16 --fused-configs '[{"maxnreg":128},{"maxnreg":96},{"maxnreg":80},{"maxnreg":64},{"maxnreg":128,"block_f":8},{"maxnreg":96,"block_f":8},{"maxnreg":128,"num_warps":8}]' \
  --out $OUT/kernel_h200_s12_regs.json > $OUT/kernel_regs.log 2>&1
echo "kernel_bench rc $?"; date -u
python - $OUT/kernel_h200_s12_regs.json <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    v = r["variants_us"]
    print(r["sparsity"], "dense", r["dense_us"], "default", r["kernel_us"], sorted(v.items(), key=lambda kv: kv[1])[:12])
PY
grep '^ir ' $OUT/kernel_regs.log | cut -c1-220
BEST=$(python -c "import json,sys; r=[r for r in json.load(open(sys.argv[1])) if r['sparsity']==0.5][0]; print(json.dumps(r['fastest_config']) if r['fastest_config'] and r['fastest_us'] < 0.97 * r['kernel_us'] else '')" $OUT/kernel_h200_s12_regs.json)
echo "BEST=$BEST"
if [ -n "$BEST" ]; then
  LTE_TRITON_CONFIG="$BEST" timeout 200 python benchmarks/e2e_gpu.py --setups static+loop --sparsities 0.5 --repeats 3 \
    --out $OUT/e2e_h200_s12_best.json > $OUT/e2e_best.log 2>&1; echo "e2e rc $?"; tail -c 600 $OUT/e2e_best.log
fi
date -u
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_bench.py tests/test_router_form.py > $OUT/pytest_gpu.txt 2>&1
echo "pytest rc $?"; tail -n 5 $OUT/pytest_gpu.txt; date -u
