"""bench/gpu_priors.sh, the one-shot GPU run of seed 004's priors: its dry run on CPU, as the device would run it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.corpora import make_tiny_corpus

ROOT = Path(__file__).resolve().parents[1]

# The device image has torch but neither Django nor pocketsphinx: the run must not need them.
BLOCKER = '''
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("django", "pocketsphinx", "espeakng_loader"):
            raise ImportError(f"{name} is not on the GPU image")
sys.meta_path.insert(0, Blocked())
'''


@pytest.mark.slow
def test_gpu_priors_script_runs_every_step_without_django(tmp_path):
    from generation.train import train_classifier

    corpus = make_tiny_corpus(tmp_path / "corpus", speakers=4, takes=1)
    train_classifier(corpus, tmp_path / "B.pt", epochs=1, seed=2, arch="paper", device="cpu", progress=False)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path / "site"),
           "HEARSAY_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "out"
    done = subprocess.run([str(ROOT / "bench" / "gpu_priors.sh"), str(out), "--quick", "--device", "cpu", "--corpus", str(corpus),
                           "--evaluator", str(tmp_path / "B.pt"), "--vocoder-seconds", "60", "--gan-seconds", "60"],
                          env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    vocoder = summary["vocoder"]
    assert vocoder["selected"].endswith("(lowest validation MCD)") and vocoder["stopped_by"] == "epochs"
    assert set(vocoder["validation_curve"]) >= {"reconstruction", "adversarial", "last"}
    figures = summary["comparison"]["figures"]
    assert set(figures) == {"original", "griffin-lim", "neural"} and figures["neural"]["real_time_factor_wall"] > 0
    assert summary["comparison"]["asr"].startswith("skipped") and figures["neural"]["asr_accuracy"] is None
    gan = summary["gan"]
    assert 0 <= gan["b_accuracy"] <= 1 and gan["fid_b"] >= 0 and gan["chance"] == pytest.approx(1 / 3)
    back = sorted(p.name for p in out.iterdir())
    assert back == ["C.metrics.json", "C.samples.png", "V.metrics.json", "V.pt", "log.txt", "summary.json"], "at most 8 files, no folders"
    assert "3/3 conditional mel GAN" in (out / "log.txt").read_text()


def test_gpu_priors_script_says_what_is_missing(tmp_path):
    done = subprocess.run([str(ROOT / "bench" / "gpu_priors.sh")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage" in done.stderr
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "bench" / "gpu_priors.sh"), str(tmp_path / "out"), "--quick", "--device", "cpu", "--corpus",
                           str(tmp_path / "nowhere"), "--evaluator", str(tmp_path / "B.pt")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "gpu_priors:" in done.stdout + done.stderr


def test_a_failed_step_costs_only_its_own_figures(tmp_path, monkeypatch):
    from bench import gpu_priors
    from generation.train import train_classifier

    corpus = make_tiny_corpus(tmp_path / "corpus", speakers=4, takes=1)
    train_classifier(corpus, tmp_path / "B.pt", epochs=1, seed=2, arch="paper", device="cpu", progress=False)
    monkeypatch.setenv("HEARSAY_CACHE_DIR", str(tmp_path / "cache"))

    def broken(*args):
        raise RuntimeError("the device fell over")

    monkeypatch.setattr(gpu_priors, "vocoder_step", broken)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["gpu_priors.py", "--out", str(out), "--quick", "--device", "cpu", "--corpus", str(corpus),
                                      "--evaluator", str(tmp_path / "B.pt")])
    with pytest.raises(SystemExit) as stopped:
        gpu_priors.main()
    assert stopped.value.code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["vocoder"]["error"] == "RuntimeError: the device fell over" and "Traceback" in summary["vocoder"]["traceback"]
    assert summary["comparison"] == {"skipped": "no vocoder was trained"}
    assert 0 <= summary["gan"]["b_accuracy"] <= 1 and (out / "C.samples.png").is_file()
