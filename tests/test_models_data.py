"""Model registry, built-in data and user factories."""

from __future__ import annotations

import pytest
import torch

from distill.batch import forward_logits, inputs_of, labels_of
from distill.data import load_data
from distill.errors import DistillError
from distill.models import MODELS, count_params, create_model
from distill.registry import Registry


def test_registry_rejects_duplicates_and_suggests() -> None:
    reg: Registry = Registry("thing")
    reg.register("alpha")(1)
    with pytest.raises(ValueError, match="duplicate"):
        reg.register("alpha")(2)
    with pytest.raises(DistillError, match="did you mean 'alpha'"):
        reg.get("alpah")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_models_map_inputs_to_logits(name: str) -> None:
    model = create_model(name, input_shape=(1, 8, 8), num_classes=10)
    assert forward_logits(model, torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert count_params(model) > 0
    assert set(MODELS.names()) >= {"mlp", "cnn"}


def test_model_errors() -> None:
    with pytest.raises(DistillError, match="unknown model"):
        create_model("resnet9000", input_shape=(4,), num_classes=2)
    with pytest.raises(DistillError, match="rejected its kwargs"):
        create_model("mlp", input_shape=(4,), num_classes=2, widht=3)
    with pytest.raises(DistillError, match="cannot import module"):
        create_model("no_such_pkg.mod:fn", input_shape=(4,), num_classes=2)
    with pytest.raises(DistillError, match="not a torch.nn.Module"):
        create_model("factories:not_a_model", input_shape=(4,), num_classes=2)
    # a user factory gets the recipe's kwargs only (never input_shape / num_classes) and its model is used as is
    model = create_model("factories:linear", input_shape=(5,), num_classes=3, in_features=7, out_features=4)
    assert isinstance(model, torch.nn.Linear) and (model.in_features, model.out_features) == (7, 4)


def test_digits_bundle() -> None:
    data = load_data("digits", seed=0)
    assert data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    item = data.train[0]
    assert set(item) == {"inputs", "labels", "index"} and item["inputs"].max() <= 1.0
    assert item["index"].item() == 0


def test_labelled_fraction_marks_rows_unlabelled_for_students_only() -> None:
    data = load_data("digits", seed=0, labelled_fraction=0.1)
    labels = torch.stack([data.train[i]["labels"] for i in range(len(data.train))])
    frac = (labels != -100).float().mean().item()
    assert frac == pytest.approx(0.1, abs=0.01)
    teacher_labels = torch.stack([data.teacher_train[i]["labels"] for i in range(len(data.train))])
    assert (teacher_labels != -100).all()


def test_user_data_factory_with_tuples() -> None:
    data = load_data("factories:blobs", kwargs={"n": 30})
    assert data.num_classes == 3 and data.input_shape == (5,)
    batch = torch.utils.data.default_collate([data.train[i] for i in range(4)])
    assert labels_of(batch).shape == (4,) and inputs_of(batch)["inputs"].shape == (4, 5)
    with pytest.raises(DistillError, match="rejected its kwargs"):
        load_data("factories:blobs", kwargs={"bogus": 1})
    with pytest.raises(DistillError, match="unknown dataset"):
        load_data("digitz")
