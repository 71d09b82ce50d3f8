"""Field inputs for the GAN priors, the neural vocoder and the latent t-SNE: output paths that hold earlier results."""
from __future__ import annotations

import json

import pytest
import torch
from django.core.management import CommandError, call_command

from generation import checkpoint
from generation.checkpoint import Checkpoint
from generation.features import PAPER
from generation.gan import MelGenerator
from tests.helpers.corpora import make_corpus, make_tiny_corpus, save_autoencoder, save_classifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("field_priors")
    import os

    os.environ["HEARSAY_CACHE_DIR"] = str(root / "cache")
    corpus = make_tiny_corpus(root / "corpus", speakers=4, takes=1)
    return {"root": root, "corpus": corpus}


@pytest.mark.parametrize("command,args", [
    ("train_gan", ["--epochs", "1", "--batch-size", "8", "--latent", "8", "--width", "4"]),
    ("train_vocoder", ["--epochs", "1", "--batch-size", "8", "--segment-frames", "8", "--dim", "8", "--hidden", "16", "--layers", "1"]),
])
def test_training_a_prior_never_replaces_a_classifier_at_its_output(tiny, tmp_path, command, args):
    """Before: `train_gan --out A.pt` / `train_vocoder --out A.pt` silently overwrote classifier A with a generator."""
    a = save_classifier(tmp_path / "A.pt", 1)
    before = a.read_bytes()
    with pytest.raises(CommandError, match="holds a classifier; choose another file name"):
        call_command(command, "--data", str(tiny["corpus"]), "--out", str(a), *args, "--device", "cpu", verbosity=0)
    assert a.read_bytes() == before
    assert not a.with_name("A.pt.partial").exists() and not a.with_name("A.metrics.json").exists()


def _generator(path):
    torch.manual_seed(5)
    kwargs = {"latent": 8, "n_classes": 0, "width": 4, "shape": list(PAPER.shape)}
    checkpoint.save(path, Checkpoint(kind="gan", arch="mel", arch_kwargs=kwargs, model=MelGenerator(**kwargs), feature_config=PAPER,
                                     classes=["bed", "go", "yes"]))
    return path


@pytest.fixture(scope="module")
def tsne_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("field_tsne")
    return {"root": root, "corpus": make_corpus(root / "corpus"), "A": save_classifier(root / "A.pt", 1),
            "AE": save_autoencoder(root / "AE.pt"), "G": _generator(root / "G.pt")}


def _tsne(s, out, *extra):
    call_command("latent_tsne", "--classifier", str(s["A"]), "--out", str(out), "--device", "cpu", *extra, verbosity=0)


def test_latent_tsne_refuses_to_replace_a_tsne_of_other_settings(tsne_setup, tmp_path):
    """Before: a rerun with another seed, or a GAN's t-SNE into the autoencoder's folder, silently replaced the earlier figure."""
    s, out = tsne_setup, tmp_path / "tsne"
    ae = ["--encoder", str(s["AE"]), "--corpus", str(s["corpus"])]
    _tsne(s, out, *ae)
    kept = {name: (out / name).read_bytes() for name in ("tsne.csv", "tsne.json")}
    _tsne(s, out, *ae)  # the same command again is fine
    assert (out / "tsne.csv").read_bytes() == kept["tsne.csv"]
    kept["tsne.json"] = (out / "tsne.json").read_bytes()
    with pytest.raises(CommandError, match="other settings \\(differs in: seed\\)"):
        _tsne(s, out, *ae, "--seed", "3")
    with pytest.raises(CommandError, match="other settings"):
        _tsne(s, out, "--gan", str(s["G"]), "--per-word", "2")
    assert {name: (out / name).read_bytes() for name in kept} == kept
    assert json.loads(kept["tsne.json"])["seed"] == 0


def test_latent_tsne_refuses_a_folder_holding_something_else(tsne_setup, tmp_path):
    s, out = tsne_setup, tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CommandError, match="not empty and holds no t-SNE"):
        _tsne(s, out, "--gan", str(s["G"]), "--per-word", "2")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    gan_out = tmp_path / "gan"
    _tsne(s, gan_out, "--gan", str(s["G"]), "--per-word", "2")
    _tsne(s, gan_out, "--gan", str(s["G"]), "--per-word", "2")
    with pytest.raises(CommandError, match="differs in: per_word"):
        _tsne(s, gan_out, "--gan", str(s["G"]), "--per-word", "3")


def _edited_generator(path, **kwargs_change):
    torch.manual_seed(5)
    kwargs = {"latent": 8, "n_classes": 3, "width": 4, "shape": list(PAPER.shape)}
    model = MelGenerator(**kwargs)
    checkpoint.save(path, Checkpoint(kind="gan", arch="mel", arch_kwargs={**kwargs, **kwargs_change}, model=model, feature_config=PAPER,
                                     classes=["bed", "go", "yes"]))
    return path


def test_an_edited_conditional_generator_is_refused_before_anything_is_written(tsne_setup, tmp_path):
    """Before: a generator knowing 2 words under a 3-word list failed mid-run ("target class index 2 out of range"),
    leaving run.json and folders behind."""
    import io

    s = tsne_setup
    raw_path = _edited_generator(tmp_path / "C.pt")
    raw = torch.load(raw_path, weights_only=True)
    raw["arch_kwargs"]["n_classes"] = 2
    raw["state_dict"]["cond.embedding.weight"] = raw["state_dict"]["cond.embedding.weight"][:2]
    torch.save(raw, tmp_path / "C2.pt")
    out = tmp_path / "out"
    with pytest.raises(CommandError, match="knows 2 words but the checkpoint names 3"):
        call_command("generate", classifier=str(s["A"]), evaluator=str(s["A"]), gan=str(tmp_path / "C2.pt"), method="cgan", out=str(out),
                     per_class=1, max_attempts=1, device="cpu", verbosity=0, stdout=io.StringIO())
    assert not out.exists()


def test_a_vocoder_built_for_other_features_than_it_records_is_refused(tmp_path):
    """Before: the vocoder ran on the features of its settings while the checkpoint claimed the classifier's (no refusal)."""
    from generation.neural_vocoder import VocosGenerator, load_vocoder
    from hearsay.errors import HearsayError

    other = PAPER.__class__(**{**PAPER.to_dict(), "f_max": 8000.0})
    kwargs = {"feature_config": other.to_dict(), "dim": 8, "hidden": 16, "layers": 1}
    path = tmp_path / "V.pt"
    checkpoint.save(path, Checkpoint(kind="vocoder", arch="vocos", arch_kwargs=kwargs, model=VocosGenerator(**kwargs), feature_config=PAPER,
                                     classes=[]))
    with pytest.raises(HearsayError, match="built for other features than the checkpoint records"):
        load_vocoder(str(path), cfg=PAPER)


def test_latent_tsne_of_a_classifier_whose_every_sample_fails_is_one_line(tsne_setup, tmp_path):
    """Before: scikit-learn's ValueError traceback ("perplexity (2.0) must be less than n_samples (0)")."""
    s = tsne_setup
    ckpt = checkpoint.load(s["A"])
    with torch.no_grad():
        ckpt.model.logits.bias.fill_(float("nan"))  # a diverged training: every maximized sample is NaN
    bad = tmp_path / "nanA.pt"
    checkpoint.save(bad, ckpt)
    for extra in (["--gan", str(s["G"]), "--per-word", "2"], ["--encoder", str(s["AE"]), "--corpus", str(s["corpus"])]):
        out = tmp_path / extra[0].strip("-")
        with pytest.raises(CommandError, match="without NaN/inf .*t-SNE needs at least 2"):
            call_command("latent_tsne", "--classifier", str(bad), "--out", str(out), "--device", "cpu", *extra, verbosity=0)
        assert not out.exists()


def test_objective_takes_words_written_with_spaces_after_the_commas(tsne_setup, tmp_path):
    """Before: `--words "bed, go"` was refused as the unknown word ' go'."""
    import io

    s, out = tsne_setup, tmp_path / "objective"
    buf = io.StringIO()
    call_command("objective", "--classifier", str(s["A"]), "--evaluator", str(s["A"]), "--n", "2", "--methods", "classifier",
                 "--gan", str(s["G"]), "--words", "bed, go", "--device", "cpu", "--jobs", "1", "--out", str(out), verbosity=0, stdout=buf)
    assert json.loads((out / "run.json").read_text())["config"]["words"] == ["bed", "go"]
    assert sorted(p.name for p in (out / "gan").glob("*.npz")) == ["bed.npz", "go.npz"]


def test_a_gan_on_a_corpus_with_one_test_clip_still_saves_its_checkpoint(tmp_path, monkeypatch):
    """Before: after every epoch had run, the quality figures failed ("the Fréchet distance needs at least two samples"),
    no checkpoint was saved, and every rerun failed the same way."""
    monkeypatch.setenv("HEARSAY_CACHE_DIR", str(tmp_path / "cache"))
    corpus = make_corpus(tmp_path / "corpus")
    lists = corpus / "testing_list.txt"
    lists.write_text(lists.read_text().splitlines()[0] + "\n")
    b = save_classifier(tmp_path / "B.pt", 2)
    out = tmp_path / "G.pt"
    call_command("train_gan", "--data", str(corpus), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--latent", "8",
                 "--width", "4", "--conditional", "--evaluator", str(b), "--device", "cpu", verbosity=0)
    metrics = checkpoint.load(out, build=__import__("generation.gan", fromlist=["build"]).build).metrics
    assert "fid_b" not in metrics and "1 clip" in metrics["fid_b_skipped"] and 0.0 <= metrics["b_accuracy"] <= 1.0
    assert not out.with_name("G.pt.partial").exists()


def test_a_corpus_of_digits_gets_opaque_stimulus_ids(tsne_setup, tmp_path):
    """Before: with words "0".."9" every hex id "spelled" a word, and generate/explain failed with
    "could not draw an opaque stimulus id that spells no word"."""
    import csv
    import io

    from generation.stimuli import stimulus_id

    digits = [str(d) for d in range(10)]
    assert len(stimulus_id("key", "x", avoid=[*digits, *"abcdef"])) == 16
    assert "bed" not in stimulus_id("key", "x", avoid=["bed", *digits])
    a = save_classifier(tmp_path / "digits.pt", 1, classes=digits)
    out = tmp_path / "out"
    buf = io.StringIO()
    call_command("generate", classifier=str(a), evaluator=str(a), gan=str(tsne_setup["G"]), method="gan", out=str(out), per_class=1,
                 max_attempts=1, device="cpu", words="0,7", verbosity=0, stdout=buf)
    rows = list(csv.DictReader(open(out / "manifest.csv", encoding="utf-8")))
    assert sorted((r["word"], r["stage"]) for r in rows) == [("0", "after"), ("0", "before"), ("7", "after"), ("7", "before")]
    # pocketsphinx cannot say "0": the set is still made, B judges it, and the output says why pocketsphinx did not
    assert "pocketsphinx n/a/n/a" in buf.getvalue() and "pocketsphinx not used: " in buf.getvalue()
    assert "no pronunciation" in json.loads((out / "run.json").read_text())["asr"]
    enhancer = list(csv.DictReader(open(out / "enhancer.csv", encoding="utf-8")))
    assert [e["asr_after"] for e in enhancer] == ["", "", ""] and enhancer[-1]["b_after"] != ""


def test_a_word_named_all_is_counted_as_itself_in_the_enhancer_table(tsne_setup, tmp_path):
    """Before: the row of a corpus word "ALL" pooled every word's clips (it matched the table's own total)."""
    import csv
    import io

    a = save_classifier(tmp_path / "upper.pt", 1, classes=["ALL", "bed", "go"])
    out = tmp_path / "out"
    call_command("generate", classifier=str(a), evaluator=str(a), gan=str(tsne_setup["G"]), method="gan", out=str(out), per_class=1,
                 max_attempts=1, device="cpu", words="ALL,bed", verbosity=0, stdout=io.StringIO())
    enhancer = list(csv.DictReader(open(out / "enhancer.csv", encoding="utf-8")))
    assert [(e["word"], e["pooled"], e["n_before"], e["n_after"]) for e in enhancer] == [
        ("ALL", "false", "1", "1"), ("bed", "false", "1", "1"), ("ALL", "true", "2", "2")]
