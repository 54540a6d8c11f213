#!/usr/bin/env bash
# Wheels bench/embedder_gpu.py needs on the lent GPU machine (Python 3.12, CUDA 13, torch and
# transformers already there, nothing reachable), cut into parts that fit one call's carry.
#
#   bash bench/gpu_wheels.sh          # here: fills .whl/ (ignored by git), about 300 MB
#
# onnxruntime-gpu alone is 255 MB and a call carries at most 64 MiB, so the parts travel in
# back-to-back calls while the machine stays warm (it goes back after 30 s idle):
#   run(carry=[".whl/part-00"], command="mkdir -p /tmp/w && cp .whl/part-* /tmp/w/")  # 00..03
#   ... the same for each part, then, in the last call:
#   run(carry=[".whl/part-04", ".whl/small"], command="bash bench/gpu_wheels.sh --install && \
#       PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/embedder_gpu.py --out $OUT/gpu.json")
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--install" ]; then  # on the GPU machine
    mkdir -p /tmp/w && cp .whl/part-* /tmp/w/  # the part that came with this call
    wheel=/tmp/w/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
    cat /tmp/w/part-* > "$wheel"
    echo "$(cat .whl/small/onnxruntime_gpu.sha256)  $wheel" | sha256sum -c -
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site /tmp/w/*.whl .whl/small/*.whl
    exit
fi
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/small
platform=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps "${platform[@]}" -d .whl onnxruntime-gpu==1.31.1
python3 -m pip download -q --no-deps "${platform[@]}" -d .whl/small \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions structlog==26.1.0 av==18.1.0
sha256sum .whl/onnxruntime_gpu-*.whl | cut -d' ' -f1 > .whl/small/onnxruntime_gpu.sha256
split -b 60M -d .whl/onnxruntime_gpu-*.whl .whl/part-
rm .whl/onnxruntime_gpu-*.whl
ls -la .whl .whl/small
