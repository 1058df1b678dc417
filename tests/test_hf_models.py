"""`hf-sequence-classifier`: a Hugging Face model from a local directory, never downloaded; a missing one is one
line naming the directory and how to point at a local one."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models import create_model
from distill.models.pretrained import is_pretrained

pytest.importorskip("transformers")
from hf_models import NUM_LABELS, ragged_batch, tiny_bert  # noqa: E402


def test_loads_a_saved_model_with_the_same_outputs(tmp_path) -> None:  # noqa: ANN001
    saved = tiny_bert("sequence").eval()
    saved.save_pretrained(tmp_path / "bert")
    model = create_model("hf-sequence-classifier", input_shape=(7,), num_classes=NUM_LABELS,
                         path=str(tmp_path / "bert")).eval()
    batch = {k: v for k, v in ragged_batch("sequence").items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, saved(**batch).logits)
    assert is_pretrained(model)  # every weight, head included, came from the directory


def test_a_new_head_is_not_a_trained_teacher(tmp_path) -> None:  # noqa: ANN001
    tiny_bert("sequence").bert.save_pretrained(tmp_path / "encoder")  # an encoder without a classification head
    model = create_model("hf-sequence-classifier", input_shape=(7,), num_classes=5, path=str(tmp_path / "encoder"))
    assert model.config.num_labels == 5 and not is_pretrained(model)


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()])
def test_a_model_not_on_disk_is_one_line(tmp_path, make) -> None:  # noqa: ANN001
    make(tmp_path / "missing")
    with pytest.raises(DistillError, match="never downloaded.*local directory") as err:
        create_model("hf-sequence-classifier", input_shape=(7,), num_classes=3, path=str(tmp_path / "missing"))
    assert "\n" not in str(err.value)
