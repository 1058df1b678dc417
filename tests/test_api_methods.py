"""One surface: the Python API runs every registered method through the same hooks as the CLI pipeline, and refuses
what it cannot do instead of falling back to single-teacher KD."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill import Distiller
from distill.data import Indexed
from distill.engine.phases import phase_names
from distill.errors import DistillError
from distill.methods import METHODS
from distill.models import create_model
from distill.teachers import CachedTeacher

SHAPE = (1, 8, 8)


def _task(n: int, seed: int) -> TensorDataset:
    """Ten noisy 8x8 templates: a class is the template an image was drawn from (learnable in a few epochs)."""
    templates = torch.randn(10, *SHAPE, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = templates[y] + 0.5 * torch.randn(n, *SHAPE, generator=g)
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def data() -> dict[str, DataLoader]:
    train = DataLoader(_task(640, 0), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    # dict batches with an `index` key, as our datasets give (CRD's memory bank needs it)
    indexed = DataLoader(Indexed(_task(640, 0)), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return {"train": train, "indexed": indexed, "test": DataLoader(_task(400, 1), batch_size=200)}


def _trained_teacher(seed: int, loader: DataLoader) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("cnn", input_shape=SHAPE, num_classes=10, channels=[8, 16])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(4):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def teachers(data) -> list[nn.Module]:
    return [_trained_teacher(s, data["train"]) for s in range(3)]


def _student() -> nn.Module:
    torch.manual_seed(7)
    return create_model("cnn", input_shape=SHAPE, num_classes=10, channels=[4, 8])


# methods for Hugging Face encoders (hidden states, embeddings) have their own API tests in tests/test_minilm.py
@pytest.mark.parametrize("method", [m for m in METHODS.names() if METHODS.get(m).models == "any"])
def test_every_registered_method_trains_through_the_api(method: str, data, teachers) -> None:
    cls = METHODS.get(method)
    given = teachers if cls.multi_teacher else teachers[0]
    student = _student()
    before = copy.deepcopy(student.state_dict())
    untrained = Distiller(teachers[0], copy.deepcopy(student), progress=False).evaluate(data["test"])
    d = Distiller(given, student, method=method, lr=1e-2, progress=False)
    d.fit(data["indexed"], epochs=4, val_loader=data["test"])
    assert d.student is student  # the user's own module holds the result
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    expected = phase_names(cls.generations({}))
    assert [p for p in d.summary if p != "scratch"] == expected
    assert ("scratch" in d.summary) == cls.needs_scratch_student({})
    after = d.evaluate(data["test"])
    acc = after["accuracy"]
    assert acc > untrained["accuracy"] + 0.08, (method, untrained, after)  # the student learnt the task (10 classes)
    assert after["agreement"] > untrained["agreement"] + 0.08, (method, untrained, after)  # and to agree with the teacher
    assert [r["val_accuracy"] for r in d.history if "val_accuracy" in r][-1] == pytest.approx(acc)


def test_ensemble_distils_from_all_teachers(data, teachers) -> None:
    d = Distiller(teachers, _student(), method="ensemble", temperature=2.0, options={"mix": [0.5, 0.25, 0.25]},
                  progress=False)
    d.fit(data["train"], epochs=1)
    assert len(d.method.teacher.members) == 3
    x, _ = next(iter(data["test"]))
    target = (d.method.teacher({"inputs": x}) / 2.0).softmax(-1)  # T·log(mixture), softened at T
    with torch.no_grad():
        probs = [(t(x) / 2.0).softmax(-1) for t in teachers]
    want = 0.5 * probs[0] + 0.25 * probs[1] + 0.25 * probs[2]
    torch.testing.assert_close(target, want, atol=1e-5, rtol=1e-5)


def test_born_again_trains_its_generations(data, teachers) -> None:
    d = Distiller(teachers[0], _student(), method="born_again", options={"generations": 3}, lr=1e-2, progress=False)
    for fit_call in range(2):  # a second fit trains further; each generation's teacher is its predecessor as it is now
        d.fit(data["train"], epochs=1)
        assert list(d.summary) == (["scratch"] if fit_call == 0 else []) + ["distilled.1", "distilled.2", "distilled"]
        # generation 1 learns from the student trained alone, generation k+1 from generation k
        chain = [d._scratch] + [d._built[n].student for n in ("distilled.1", "distilled.2")]
        for teacher_of_next, name in zip(chain, ("distilled.1", "distilled.2", "distilled")):
            source = d._built[name].teacher.model
            for k, v in teacher_of_next.state_dict().items():
                torch.testing.assert_close(source.state_dict()[k], v)
    assert d._built["distilled"].student is d.student


def test_api_refuses_what_it_cannot_do(teachers, tmp_path) -> None:
    with pytest.raises(DistillError, match="learns from one teacher.*ensemble"):
        Distiller(teachers, _student(), method="kd")
    with pytest.raises(DistillError, match="as a list"):
        Distiller(teachers[0], _student(), method="ensemble", options={"teachers": [{"name": "cnn"}]})
    with pytest.raises(DistillError, match="unknown method"):
        Distiller(teachers[0], _student(), method="kdd")
    with pytest.raises(DistillError, match="lr"):
        Distiller(teachers[0], _student(), lr=-1.0)
    with pytest.raises(DistillError, match="options"):
        Distiller(teachers[0], _student(), method="kd", options={"sigmoidd": True})

    class Source:  # a teacher source that is not a model (like a CachedTeacher)
        def __call__(self, batch):  # noqa: ANN001, ANN204
            raise AssertionError("not called")

        def to(self, device):  # noqa: ANN001, ANN202
            return self

    for method in ("fitnet", "ensemble", "born_again"):
        if METHODS.get(method).runs_teacher_models:
            with pytest.raises(DistillError, match="nn.Module teachers"):
                Distiller(Source(), _student(), method=method)
    assert CachedTeacher  # the real non-model source the message points at


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_fit_leaves_the_students_memory_format(fmt, data, teachers) -> None:
    student = _student().to(memory_format=fmt)
    conv = [p for p in student.parameters() if p.ndim == 4]
    assert conv and all(p.is_contiguous(memory_format=fmt) for p in conv)
    ids = [id(p) for p in student.parameters()]
    Distiller(teachers[0], student, progress=False).fit(data["train"], epochs=1)
    assert all(p.is_contiguous(memory_format=fmt) for p in conv)
    assert [id(p) for p in student.parameters()] == ids  # the same Parameter objects, trained in place


def test_api_refuses_an_argument_the_method_ignores(teachers) -> None:
    with pytest.raises(DistillError, match="alpha"):
        Distiller(teachers[0], _student(), method="dkd", alpha=0.5)
    with pytest.raises(DistillError, match="temperature"):
        Distiller(teachers[0], _student(), method="scratch", temperature=2.0)
    Distiller(teachers[0], _student(), method="dkd", temperature=2.0)  # one it reads is fine


@pytest.mark.parametrize("method", METHODS.names())
def test_a_saved_recipe_loads_again_for_every_method(method: str, tmp_path) -> None:
    """config.yaml of every run reloads (resume, export) even for methods that ignore alpha or temperature."""
    from distill.recipe import dump_recipe, load_recipe

    recipe = load_recipe("digits", [f"distill.method={method}", "distill.alpha=null", "distill.temperature=null"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path) == recipe


def test_api_refuses_auto_temperature(teachers) -> None:
    with pytest.raises(DistillError, match="auto"):
        Distiller(teachers[0], _student(), temperature="auto")
