"""DistilBERT-style students: the teacher's architecture with fewer layers, initialised from a subset of its layers."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models.layer_subset import layer_subset_student

pytest.importorskip("transformers")
from hf_models import ragged_batch, tiny_bert  # noqa: E402

STACK = "bert.encoder.layer."


def _layer(state: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k[len(f"{STACK}{i}."):]: v for k, v in state.items() if k.startswith(f"{STACK}{i}.")}


@pytest.mark.parametrize("layers,expect", [(None, [0, 2, 4]), ([1, 5], [1, 5])])
def test_student_layer_i_is_teacher_layer_2i_parameter_by_parameter(layers, expect) -> None:
    teacher = tiny_bert(layers=6, seed=3)
    student = layer_subset_student(teacher, layers)
    assert type(student) is type(teacher) and student.config.num_hidden_layers == len(expect)
    assert teacher.config.num_hidden_layers == 6  # the teacher is untouched
    s, t = student.state_dict(), teacher.state_dict()
    for i, j in enumerate(expect):
        s_layer, t_layer = _layer(s, i), _layer(t, j)
        assert s_layer.keys() == t_layer.keys() and len(s_layer) > 10
        for name, value in s_layer.items():
            assert torch.equal(value, t_layer[name]), (i, j, name)
        if j != i:  # and not the teacher layer of the same index
            assert not all(torch.equal(v, _layer(t, i)[k]) for k, v in s_layer.items())
    rest = [k for k in s if not k.startswith(STACK)]
    assert any("embeddings" in k for k in rest) and any("classifier" in k for k in rest)
    for k in rest:  # embeddings, pooler, head copied
        assert torch.equal(s[k], t[k]), k
    s[rest[0]].add_(1.0)  # copies, not shared tensors
    assert not torch.equal(s[rest[0]], t[rest[0]])


def test_the_student_runs_like_the_teacher_on_the_layers_it_kept() -> None:
    """Keeping every layer reproduces the teacher's outputs exactly."""
    teacher = tiny_bert(layers=4, seed=1).eval()
    same = layer_subset_student(teacher, [0, 1, 2, 3]).eval()
    batch = ragged_batch("sequence")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(same(**inputs).logits, teacher(**inputs).logits, rtol=0, atol=0)


@pytest.mark.parametrize("layers", [[], [6], [2, 1], [0, 0], [-1]])
def test_bad_layer_lists_are_one_line(layers) -> None:
    with pytest.raises(DistillError, match=r"increasing teacher layer indices in \[0, 5\]") as exc:
        layer_subset_student(tiny_bert(layers=6), layers)
    assert "\n" not in str(exc.value)


def test_a_model_without_a_layer_config_is_refused() -> None:
    with pytest.raises(DistillError, match="num_hidden_layers"):
        layer_subset_student(torch.nn.Linear(3, 3))
