#!/usr/bin/env bash
# Seed 004's priors on one lent GPU (bench/gpu_priors.py): the neural vocoder against Griffin-Lim, then the conditional mel GAN.
#
#   bench/gpu_priors.sh --prepare                     # here, once: .gpu/corpus, .gpu/B.pt and .gpu/whl (about 3 minutes on 2 cores)
#   bench/gpu_priors.sh OUT                           # on the device, carrying .gpu: about 4 minutes on one H100
#   bench/gpu_priors.sh OUT --quick --device cpu      # dry run of every step (add --corpus/--evaluator for a tiny corpus)
#
# The device has no eSpeak NG, Django or soundfile, and nothing can be fetched there: --prepare synthesizes the
# corpus (make_corpus --speakers 20, 700 clips), trains classifier B on it and downloads soundfile's wheels, all
# into .gpu/ (ignored by git, about 27 MiB), which the run carries. Uses $PYTHON, else the project's .venv, else
# python3. Extra arguments go to bench/gpu_priors.py; the run stops itself after 290 s (each step writes
# OUT/summary.json as it finishes, so a cut run still reports).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3
fi

if [[ "${1:-}" == "--prepare" ]]; then
  [[ -e .gpu/corpus || -e .gpu/B.pt ]] && { echo "bench/gpu_priors.sh: .gpu/ is already prepared; remove it to make it again" >&2; exit 2; }
  mkdir -p .gpu/whl
  # the features cache stays outside .gpu, so the carried folder holds only what the run needs
  export HEARSAY_CACHE_DIR="${TMPDIR:-/tmp}/gpu-priors-prepare-cache"
  "$py" manage.py make_corpus --out .gpu/corpus --speakers 20
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$py" manage.py train_classifier --data .gpu/corpus --out .gpu/B.pt --seed 2 --epochs 25
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
  du -sh .gpu
  exit 0
fi

[[ $# -ge 1 && "$1" != -* ]] || { echo "usage: bench/gpu_priors.sh OUT [--quick] [--device cpu|cuda] [bench/gpu_priors.py options] | --prepare" >&2; exit 2; }
out="$1"
shift
mkdir -p "$out"
if ! "$py" -c "import soundfile" 2>/dev/null; then
  if compgen -G ".gpu/whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-priors-site .gpu/whl/*.whl
    export PYTHONPATH="/tmp/gpu-priors-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "bench/gpu_priors.sh: $py cannot import soundfile and .gpu/whl has no wheels: run bench/gpu_priors.sh --prepare here and carry .gpu" >&2
    exit 2
  fi
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), flush=True)"
timeout 290 "$py" -u bench/gpu_priors.py --out "$out" "$@" 2>&1 | tee "$out/log.txt"
