#!/usr/bin/env bash
# ftjax against PyTorch on one GPU: bf16 compute with fp32 master weights in both, batches big
# enough to fill the chip, MFU against the vendor's dense bf16 peak (H100 / H200 SXM: 989 TFLOP/s).
# BERT runs without dropout so both sides use fused attention (cuDNN here, SDPA in torch).
#   PEAK_TFLOPS=989 OUT=bench_gpu launch/gpu_bench.sh [extra ftjax.bench flags, e.g. --smoke]
# Needs jax[cuda] and a CUDA torch. Writes $OUT_bert.json and $OUT_resnet.json.
set -euo pipefail
peak=${PEAK_TFLOPS:-989}
out=${OUT:-bench_gpu}
common=(--dtype=bfloat16 --peak_tflops="$peak" --steps="${STEPS:-20}" --warmup=3 --input)
python -m ftjax.bench --models=bert_base_mlm --batch="${BERT_BATCH:-128}" --seq=128 --dropout=0 \
  "${common[@]}" --json="${out}_bert.json" "$@"
python -m ftjax.bench --models=resnet50 --batch="${RESNET_BATCH:-256}" --image=224 \
  "${common[@]}" --json="${out}_resnet.json" "$@"
