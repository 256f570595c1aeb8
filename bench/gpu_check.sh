#!/usr/bin/env bash
# GPU check for the CUDA paths, meant for a machine with an NVIDIA GPU; takes under 8 minutes.
#
# It prints the GPU (nvidia-smi), runs the unit tests of the text encoder, the top-k scorer and this
# benchmark (their CUDA tests run only when torch sees a GPU), then the text-encoder benchmark on the
# GPU (bench/encoders.py: catalog embedding by recstream's catalog path against sentence-transformers'
# encode, same texts, same model, both fp16; review encoding by batch size up to 1,024), and then the
# scoring benchmark with
# recstream's ItemMatrix/score_topk and plain torch.topk on the GPU (fp16, the worker's default
# there) against faiss IndexFlatIP on the CPU (faiss-gpu is not installed), at N = 10k, 100k and 1M
# items, d = 384, batches 1 to 1,024, plus IVF and HNSW (200k subsample) with their recall@10.
# Then the learned user encoder (issue 8): its serving cost per event on the GPU against the text
# profile (bench/learned_serving.py --device cuda), and, when the MovieLens folder is there
# ($ML, default ../shared/datasets/ml-latest-small), `recstream train` on CUDA for 8 epochs.
# The JSON goes to $OUT/encoders_cuda.json, $OUT/topk_cuda.json and $OUT/learned_serving_cuda.json
# (default bench/results/). See docs/benchmarks.md and docs/learned.md.
#
# Usage, from the repository root:  OUT=/some/dir bash bench/gpu_check.sh
set -euo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python
fi

echo "== nvidia-smi"
nvidia-smi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

echo "== unit tests (CUDA tests included when a GPU is visible)"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_text_encoder.py tests/unit/test_topk.py tests/unit/test_bench_topk.py \
    tests/unit/test_sasrec.py tests/unit/test_learned_serving.py -rs

echo "== text encoders on cuda"
timeout 150 "$PY" bench/encoders.py --device cuda --catalog-texts 10000 --review-texts 2048 --reps 3 \
    --batch-sizes 1,16,64,256,1024 --output "$OUT_DIR/encoders_cuda.json" > /dev/null
"$PY" - "$OUT_DIR/encoders_cuda.json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
if "error" in doc:
    sys.exit(f"encoder benchmark error: {doc['error']}")
print(json.dumps({k: doc[k] for k in ("catalog", "reviews") if k in doc}, indent=1)[:6000])
EOF

echo "== scoring benchmark on cuda"
timeout 270 "$PY" bench/topk.py --device cuda --sizes 10000,100000,1000000 --cell-target-s 1 \
    --output "$OUT_DIR/topk_cuda.json" > /dev/null
"$PY" - "$OUT_DIR/topk_cuda.json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
if "error" in doc:
    sys.exit(f"benchmark error: {doc['error']}")
print("machine:", doc["machine"].get("gpu"), "|", doc["machine"]["cpu_model"], "x", doc["machine"]["threads"], "threads")
for r in doc["results"]["exact"]:
    print(f"N={r['n']:>8} B={r['batch']:>5} {r['label']:<24} {r['engine']:<6} {r['users_per_s']:>12.0f} users/s")
for r in doc["ratios"]["approximate_over_exact"]:
    print(f"N={r['n']:>8} B={r['batch']:>5} {r['label']:<34} recall {r['recall_at_k']}  x{r['speedup_vs_faiss_flat']} vs faiss flat")
print("wall", doc["wall_s"], "s")
EOF
echo "== learned user encoder: serving cost on cuda"
timeout 120 "$PY" bench/learned_serving.py --device cuda --rounds 2 --output "$OUT_DIR/learned_serving_cuda.json" 2>&1 \
    | grep "\[learned_serving\]"
ML="${ML:-../shared/datasets/ml-latest-small}"
if [[ -d "$ML" ]]; then
    echo "== recstream train on cuda ($ML)"
    timeout 200 "$PY" -m recstream train --dataset "$ML" --validation-from 2013-08-24 --split 2016-03-22 \
        --epochs 8 --patience 2 --torch-threads 1 --device cuda --no-progress -o "$OUT_DIR/ml-sasrec-cuda.ckpt"
else
    echo "== no MovieLens folder at $ML: training on cuda skipped"
fi
echo "== done: $OUT_DIR/topk_cuda.json"
