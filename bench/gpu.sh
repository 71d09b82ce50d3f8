#!/usr/bin/env bash
# One prepared GPU run: bench/gpu.py's maximization (fp32/TF32/bf16), Griffin-Lim and objective-experiment figures.
#
#   bench/gpu.sh                        # on the lent device: about 4 minutes on one H100
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
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec timeout 290 "$py" bench/gpu.py --out "${GPU_BENCH_OUT:-var/bench-gpu}" "$@"
