"""Contracts between the core and its plugins: the core holds no modality knowledge.
Finding words come from the dataset, inputs from the encoder."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import ClassVar

import numpy as np

from graftkit.data import GraftDataset


class Organs(GraftDataset):
    """A dataset written to the base class alone: its class names hold CT anatomy words."""

    name: ClassVar[str] = "organs"
    class_names: ClassVar[list[str]] = ["Lung mass with pattern", "Artery wall tear"]

    embedding_dim = 4

    def records(self, split):
        return []

    def load(self, volume):
        raise NotImplementedError

    def condition_texts(self, volume):
        return []

    def class_text(self, class_index):
        return self.class_names[class_index]


def test_finding_words_default_is_neutral():
    """The default stoplist is English connectives only: no CT word is dropped from a dataset
    that did not ask for it, and short words are left out as before."""
    assert Organs.finding_words() == {"lung", "mass", "pattern", "artery", "wall", "tear"}


def test_a_dataset_adds_its_domain_stopwords():
    class Anatomy(Organs):
        finding_stopwords = GraftDataset.finding_stopwords | {"lung", "artery", "wall"}

    assert Anatomy.finding_words() == {"mass", "pattern", "tear"}


def test_ct_rate_finding_words_are_the_paper_split():
    """CT-RATE's stoplist lives in its plugin and gives the NLL split the same 24 words as the
    core's former list (figures of existing runs unchanged)."""
    from graftkit_ct_rate.dataset import CTRateDataset

    words = CTRateDataset.finding_words()
    assert len(words) == 24
    assert {"fibrotic", "sequela", "calcification", "coronary", "nodule"} <= words
    assert not words & {"pulmonary", "lung", "artery", "medical", "material", "wall", "pattern"}


def test_digits_plugin_needs_no_ct_setting(tmp_path):
    """The digits plugin declares its own inputs (``.npy`` images) and its class words; nothing
    in it switches a CT default off."""
    from graftkit_digits import dataset, encoder
    from graftkit_digits.dataset import DigitsDataset
    from graftkit_digits.encoder import DigitRowEncoder

    for module in (dataset, encoder):
        text = Path(module.__file__).read_text().lower()
        assert "nifti" not in text and "dicom" not in text
    assert "finding_stopwords" not in vars(DigitsDataset)
    assert DigitsDataset.finding_words() == {
        "oval", "upper", "loop", "lower", "straight", "stroke", "horizontal", "open", "curve",
    }  # fmt: skip
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "three.npy", np.zeros((8, 8)))
    (tmp_path / "a" / "scan.nii.gz").write_bytes(b"")
    found = DigitRowEncoder.discover_inputs(tmp_path)
    assert found == [tmp_path / "a" / "three.npy"]
    assert DigitRowEncoder.input_stem(found[0]) == "three"


def _string_literals(tree: ast.AST) -> list[str]:
    """String constants of a module, docstrings left out (they may cite a plugin)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    ]  # fmt: skip


def test_core_code_holds_no_ct_vocabulary():
    """Input formats and CT words live in plugins: no string the core's code uses names one."""
    root = Path(__import__("graftkit").__file__).parent
    banned = ("nifti", "dicom", ".nii", "rescale", "pulmonary", "lung", "hounsfield")
    for path in root.rglob("*.py"):
        for text in _string_literals(ast.parse(path.read_text())):
            hits = [word for word in banned if word in text.lower()]
            assert not hits, f"{path.relative_to(root)}: {hits[0]!r} in {text[:60]!r}"
