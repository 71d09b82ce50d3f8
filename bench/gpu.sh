#!/usr/bin/env bash
# One prepared GPU run: bench/gpu.py's maximization (fp32/TF32/bf16), Griffin-Lim and objective-experiment figures.
#
#   bench/gpu.sh                        # on the lent device: budgeted for under 5 minutes on one H100
#   bench/gpu.sh --quick --device cpu   # dry run of every step in seconds (the test suite runs this)
#
# Uses $PYTHON, else the project's .venv, else python3 (the device machine has no network: nothing is installed
# or downloaded; tiny models are trained by the script itself). Extra arguments go to bench/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3
fi
# The device image has torch, torchaudio, matplotlib and scipy but not soundfile (and its cffi): carry them as wheels
# in .whl/ (made here with: python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
#   --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl
#   soundfile==0.14.0 cffi==2.1.1 pycparser==3.12), named in the run's carry.
if ! "$py" -c "import soundfile" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-bench-site .whl/*.whl
    export PYTHONPATH="/tmp/gpu-bench-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "bench/gpu.sh: $py cannot import soundfile; carry its wheels in .whl/ (see the comment at the top)" >&2
    exit 2
  fi
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec timeout 290 "$py" bench/gpu.py --out "${GPU_BENCH_OUT:-var/bench-gpu}" "$@"
