#!/usr/bin/env bash
# Runs the GPU benchmarks on a GPU machine, from the repository root: `python -m bench.throughput run gpu`,
# then the whole-pipeline smoke run `python -m bench.gpu_smoke run`. Wheels found under .whl/ (trl,
# datasets, pydantic, pyarrow... that the machine's Python lacks) are installed into /tmp/site first.
# Records are appended to bench/results/{throughput_gpu,gpu_smoke}.jsonl and copied, with the logs, to $OUT.
#   SKIP_THROUGHPUT=1       skip the throughput measurement
#   THROUGHPUT_TIMEOUT=150  seconds before the throughput run is stopped
#   SMOKE_TEACHER=qwen3-8b  teacher architecture of the smoke run (qwen3-4b where /tmp has < 60 GB free)
#   SMOKE_TIMEOUT=360       seconds before the smoke run is stopped
#   SMOKE_NAME=gpu_smoke    the smoke run's name in its records, and its .log under $OUT
set -uo pipefail
OUT=${OUT:-bench/results}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# The smoke run writes ~46 GB of safetensors with an 8B teacher (raw + RL teacher + students).
FREE_GB=$(df -BG --output=avail /tmp | tail -1 | tr -dc 0-9); echo "free disk in /tmp: ${FREE_GB} GB"
TEACHER=${SMOKE_TEACHER:-qwen3-8b}
[ "$TEACHER" = qwen3-8b ] && [ "${FREE_GB:-0}" -lt 60 ] && TEACHER=qwen3-4b && echo "not enough disk for the 8B teacher: using $TEACHER"
python3 -c "import torch, transformers, trl, datasets, pydantic, pyarrow; print(torch.__version__, transformers.__version__, trl.__version__, datasets.__version__, pyarrow.__version__)" || exit 1
mkdir -p "$OUT"
if [ -z "${SKIP_THROUGHPUT:-}" ]; then
  timeout "${THROUGHPUT_TIMEOUT:-150}" python3 -m bench.throughput run gpu --again > "$OUT/throughput_gpu.log" 2>&1; echo "throughput rc=$?"
  tail -5 "$OUT/throughput_gpu.log"
fi
timeout "${SMOKE_TIMEOUT:-360}" python3 -m bench.gpu_smoke run --teacher "$TEACHER" --name "${SMOKE_NAME:-gpu_smoke}" > "$OUT/${SMOKE_NAME:-gpu_smoke}.log" 2>&1; echo "smoke rc=$?"
[ "$OUT" -ef bench/results ] || cp bench/results/throughput_gpu.jsonl bench/results/gpu_smoke.jsonl "$OUT/" 2>/dev/null
grep -v "it/s\]" "$OUT/${SMOKE_NAME:-gpu_smoke}.log" | grep -v '^ ' | tail -40; df -h /tmp | tail -1
