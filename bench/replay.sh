#!/usr/bin/env bash
# Backtest replay benchmark (item 5 of the benchmark issue): events/s of `recstream backtest` on
# ml-latest-small, through the real broker, with the README's protocol.
#
# It produces the dataset to a fresh topic prefix, runs `recstream backtest --json-file`, prints the
# timings (produce seconds, replay seconds and events/s, scoring seconds, total) and the metrics as
# one JSON document, and deletes the prefix's topics and the replay namespace afterwards (also
# after an error or Ctrl-C).
#
# Usage, from the repository root, with a broker on 127.0.0.1:9092 (deploy/kafka/kafka.sh start):
#   bash bench/replay.sh [DATASET_DIR] [SPLIT]     # defaults: ../shared/datasets/ml-latest-small 2016-03-22
# Output: bench/results/replay.json (OUT=dir to change), and stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/datasets/ml-latest-small}"
SPLIT="${2:-2016-03-22}"
OUT_DIR="${OUT:-bench/results}"
BIN=.venv/bin
mkdir -p "$OUT_DIR"
PREFIX="benchreplay-$(date +%s)-$RANDOM."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

cleanup() {
    "$BIN/python" - "$PREFIX" <<'PY' || true
import sys
from recstream.streams import topics as T
from recstream.streams.config import KafkaSettings
prefix = sys.argv[1]
s = KafkaSettings(topic_prefix=prefix)
admin = T._admin(s, 30.0)
try:  # the dataset's topics, its changelogs and the backtest's replay namespace (<prefix>backtest-...)
    names = [n for n in admin.list_topics() if n.startswith(prefix)]
finally:
    admin.close()
if names:
    T.delete_topics(s, names)
print(f"replay bench: deleted {len(names)} topics under {prefix!r}", file=sys.stderr)
PY
}
trap cleanup EXIT

start=$(date +%s.%N)
"$BIN/recstream" produce "$DATA" --topic-prefix "$PREFIX" >&2
produced=$(date +%s.%N)
"$BIN/recstream" backtest --topic-prefix "$PREFIX" --split "$SPLIT" --json-file "$OUT_DIR/replay_backtest.json" >&2
"$BIN/python" - "$OUT_DIR/replay_backtest.json" "$start" "$produced" "$DATA" "$SPLIT" <<'PY' | tee "$OUT_DIR/replay.json"
import json, os, sys
sys.path.insert(0, "bench")
from common import cpu_model, mem_total_gib, pkg_version
doc = json.load(open(sys.argv[1]))
start, produced = float(sys.argv[2]), float(sys.argv[3])
out = {
    "benchmark": "recstream backtest replay (bench/replay.sh)",
    "dataset": sys.argv[4], "split": sys.argv[5],
    "machine": {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "memory_gib": mem_total_gib()},
    "versions": {p: pkg_version(p) for p in ("recstream", "faust-streaming", "kafka-python", "torch")},
    "produce_s": round(produced - start, 1),
    "timings": doc.get("timings"),
    "counts": doc.get("counts"),
    "metrics_at_10": {name: {k: round(v, 4) for k, v in m["metrics"].items() if k.endswith("@10")}
                      for name, m in doc.get("methods", {}).items()},
}
print(json.dumps(out, indent=1))
PY
