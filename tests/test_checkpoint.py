"""Checkpoints: self-contained, refused when their features, classes or file do not fit."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from generation import checkpoint, nets
from generation.checkpoint import Checkpoint, require_compatible
from hearsay.errors import HearsayError
from generation.features import PAPER


def _ckpt(tmp_path, name: str, classes=("no", "yes"), cfg=PAPER, kind="classifier") -> Checkpoint:
    if kind == "classifier":
        arch, kwargs = "paper", {"n_classes": len(classes), "input_shape": list(cfg.shape)}
    else:
        arch, kwargs = "paper", {"latent": 8, "input_shape": list(cfg.shape)}
    torch.manual_seed(0)
    ckpt = Checkpoint(kind=kind, arch=arch, arch_kwargs=kwargs, model=nets.build(kind, arch, kwargs), feature_config=cfg,
                      classes=list(classes), train_config={"seed": 0}, metrics={"test_accuracy": 0.5}, data_fingerprint="f" * 64)
    checkpoint.save(tmp_path / name, ckpt)
    return checkpoint.load(tmp_path / name)


def test_round_trip_needs_nothing_else(tmp_path):
    saved = _ckpt(tmp_path, "a.pt")
    assert saved.classes == ["no", "yes"] and saved.feature_config == PAPER
    assert saved.metrics == {"test_accuracy": 0.5} and saved.versions["torch"] == torch.__version__.split("+")[0]
    assert saved.sha256 == checkpoint.file_sha256(tmp_path / "a.pt")
    x = torch.rand(3, 90, 80)
    torch.manual_seed(0)
    fresh = nets.build("classifier", "paper", {"n_classes": 2, "input_shape": [90, 80]}).eval()
    assert torch.allclose(saved.model(x), fresh(x))


def test_other_feature_config_is_refused(tmp_path):
    a = _ckpt(tmp_path, "a.pt")
    b = _ckpt(tmp_path, "b.pt", cfg=dataclasses.replace(PAPER, f_max=8000.0))
    with pytest.raises(HearsayError, match="different features.*f_max"):
        require_compatible(a, b)


def test_other_classes_are_refused(tmp_path):
    a = _ckpt(tmp_path, "a.pt")
    with pytest.raises(HearsayError, match="different class lists"):
        require_compatible(a, _ckpt(tmp_path, "b.pt", classes=("yes", "no")))
    require_compatible(a, _ckpt(tmp_path, "c.pt"), _ckpt(tmp_path, "ae.pt", kind="autoencoder"))


def test_unknown_word_names_the_known_ones(tmp_path):
    with pytest.raises(HearsayError, match="unknown word 'maybe'.*no, yes"):
        _ckpt(tmp_path, "a.pt").class_index("maybe")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_corrupt_file_is_one_line(tmp_path, content):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(HearsayError, match="not a readable checkpoint") as err:
        checkpoint.load(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)


def test_foreign_and_wrong_kind_files_are_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(HearsayError, match="not a Hearsay checkpoint"):
        checkpoint.load(tmp_path / "foreign.pt")
    _ckpt(tmp_path, "ae.pt", kind="autoencoder")
    with pytest.raises(HearsayError, match="holds an autoencoder, but a classifier is needed"):
        checkpoint.load(tmp_path / "ae.pt", kind="classifier")
    with pytest.raises(HearsayError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "missing.pt")
