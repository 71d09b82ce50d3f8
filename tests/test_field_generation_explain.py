"""Field inputs for the explanation commands: checkpoints a researcher damaged or edited, reruns of finished runs."""
from __future__ import annotations

import pytest
import torch
from django.core.management import CommandError, call_command

from tests.helpers.explain import make_corpus, train_classifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FAST = ["--n", "2", "--tune-n", "0", "--methods", "saliency,occlusion", "--percentiles", "90", "--min-cluster-sizes", "5",
        "--min-samples", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("field_explain")
    corpus = make_corpus(root / "corpus", per_word=8)
    return {"root": root, "corpus": corpus, "paper": train_classifier(root / "paper.pt", corpus, "paper", steps=100)}


def _edited(setup, name, edit):
    raw = torch.load(setup["paper"], weights_only=True)
    edit(raw)
    path = setup["root"] / f"{name}.pt"
    torch.save(raw, path)
    return path


EDITS = {
    "no kind": (lambda r: r.pop("kind"), "lacks 'kind'"),
    "no state_dict": (lambda r: r.pop("state_dict"), "lacks 'state_dict'"),
    "classes as text": (lambda r: r.update(classes="beep,hush"), "malformed 'classes'"),
    "unknown setting": (lambda r: r["arch_kwargs"].update(bogus=1), "cannot build architecture"),
    "features of another net": (lambda r: r.update(feature_config={"sample_rate": 8000}), "expects \\(36, 16\\) inputs"),
    "a word added": (lambda r: r.update(classes=["beep", "hush", "extra"]), "2 outputs but the checkpoint names 3"),
    "no mel bands": (lambda r: r["feature_config"].update(n_mels=0), "impossible feature settings \\(n_mels\\)"),
    "NaN weights": (lambda r: r["state_dict"].update({k: v * float("nan") for k, v in r["state_dict"].items()
                                                      if v.is_floating_point()}), "non-finite"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_a_damaged_or_edited_classifier_is_one_line_and_writes_nothing(setup, tmp_path, name):
    """Before: KeyError/TypeError/RuntimeError tracebacks (the last after writing run.json), or NaN weights explained silently."""
    edit, message = EDITS[name]
    path = _edited(setup, name.replace(" ", "_"), edit)
    out = tmp_path / "out"
    with pytest.raises(CommandError, match=message) as err:
        call_command("explain", "--classifier", str(path), "--corpus", str(setup["corpus"]), "--out", str(out), *FAST, verbosity=0)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_rerunning_a_finished_explain_rewrites_the_same_tables(setup, tmp_path):
    """Before: per_clip.csv came back with its columns in alphabetical order once its methods were resumed from JSON."""
    out = tmp_path / "out"
    args = ["--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(out), *FAST]
    call_command("explain", *args, verbosity=0)
    first = {name: (out / name).read_bytes() for name in ("per_clip.csv", "faithfulness.csv", "manifest.csv")}
    assert first["per_clip.csv"].startswith(b"method,source_file,word,target_word,pred_a,prob,")
    call_command("explain", *args, verbosity=0)
    assert {name: (out / name).read_bytes() for name in first} == first


def test_a_corpus_of_some_of_the_classifiers_words_is_explained(setup, tmp_path):
    """Before: a copy of the corpus keeping only "beep" was refused as having "other words" than the classifier."""
    import shutil

    sub = tmp_path / "beep-only"
    shutil.copytree(setup["corpus"] / "beep", sub / "beep")
    for name in ("testing_list.txt", "validation_list.txt"):
        shutil.copy(setup["corpus"] / name, sub / name)
    out = tmp_path / "out"
    call_command("explain", "--classifier", str(setup["paper"]), "--corpus", str(sub), "--out", str(out), *FAST, verbosity=0)
    import csv

    rows = list(csv.DictReader(open(out / "manifest.csv", encoding="utf-8")))
    assert rows and {r["word"] for r in rows} == {"beep"}
    call_command("importance_masks", "--classifier", str(setup["paper"]), "--corpus", str(sub), "--out", str(tmp_path / "masks"),
                 "--n", "2", "--steps", "5", "--device", "cpu", verbosity=0)
    other = tmp_path / "other"
    shutil.copytree(sub, other)
    (other / "beep").rename(other / "boop")
    for name in ("testing_list.txt", "validation_list.txt"):
        (other / name).write_text((other / name).read_text().replace("beep/", "boop/"))
    with pytest.raises(CommandError, match="not among its words: boop"):
        call_command("explain", "--classifier", str(setup["paper"]), "--corpus", str(other), "--out", str(tmp_path / "o2"), *FAST,
                     verbosity=0)
    assert not (tmp_path / "o2").exists()


def test_a_strategy_given_twice_gives_a_manifest_that_loads(setup, tmp_path):
    """Before: `--audio identification,identification` wrote every clip's audio twice under one stimulus id, and
    load_stimuli refused the manifest ("duplicate stimulus_id")."""
    import csv

    out = tmp_path / "out"
    call_command("explain", "--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(out), *FAST,
                 "--audio", "identification,identification", verbosity=0)
    ids = [r["stimulus_id"] for r in csv.DictReader(open(out / "manifest.csv", encoding="utf-8"))]
    assert len(ids) == len(set(ids)) > 2
    from evaluation.stimuli import read_manifest

    assert len(read_manifest(out / "manifest.csv")) == len(ids)


def test_visualize_gives_each_tv_weight_its_own_result(setup, tmp_path):
    """Before: `--tv 0,0.0` gave two rows for one file, and λ values equal in 6 digits shared one result file,
    so the second λ silently reported the first one's input and activation."""
    import csv

    out = tmp_path / "vis"
    base = ["--classifier", str(setup["paper"]), "--steps", "4", "--layer", "logits,logits", "--device", "cpu"]
    call_command("visualize", *base, "--tv", "0,0.0", "--out", str(out), verbosity=0)
    rows = list(csv.DictReader(open(out / "learned.csv", encoding="utf-8")))
    assert [(r["layer"], r["tv"]) for r in rows] == [("logits", "0.0")]
    with pytest.raises(CommandError, match="too close"):
        call_command("visualize", *base, "--tv", "0.1234567,0.1234568", "--out", str(tmp_path / "close"), verbosity=0)
    assert not (tmp_path / "close").exists()


VERACITY = ["--n", "4", "--steps", "100", "--lime-samples", "30", "--horse-methods", "saliency", "--device", "cpu"]


def test_veracity_counts_a_k_given_twice_once(setup, tmp_path):
    """Before: `--k 1,1,2` counted every flip at k = 1 twice, giving shares of labels flipped back above 1."""
    import csv

    out = tmp_path / "ver"
    call_command("veracity", "--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(out), *VERACITY,
                 "--k", "1,10,10", "--segments-time", "10", verbosity=0)
    rows = list(csv.DictReader(open(out / "veracity.csv", encoding="utf-8")))
    assert [c for c in rows[0] if c.startswith("largest_top")] == ["largest_top1", "largest_top10"]
    time = next(r for r in rows if r["segmentation"] == "time")
    assert int(time["adversarial_clips"]) > 0
    assert float(time["largest_top10"]) == 1.0  # restoring all 10 segments restores the clean clip: always flips back
    for r in rows:
        assert all(float(r[c]) <= 1.0 for c in r if c.startswith(("lime_top", "largest_top")) and r[c] != "")


@pytest.mark.parametrize("option", [["--segments-freq", "-2"], ["--segments-freq", "0"], ["--partial-segments", "-1"]])
def test_veracity_refuses_impossible_segmentations_before_writing(setup, tmp_path, option):
    """Before: an IndexError traceback after run.json was written (-2), or a run with a single segment (0)."""
    out = tmp_path / "ver"
    with pytest.raises(CommandError, match="segments_freq must be at least 1 and partial_segments at least 0"):
        call_command("veracity", "--classifier", str(setup["paper"]), "--corpus", str(setup["corpus"]), "--out", str(out), *VERACITY,
                     *option, verbosity=0)
    assert not out.exists()
