"""Recipes: validation, overrides, round trip."""

from __future__ import annotations

import pytest
import yaml
from conftest import RECIPES

from distill.config import Recipe, apply_override
from distill.errors import DistillError
from distill.recipe import dump_recipe, load_recipe, validate


def test_default_recipe_loads_and_round_trips(tmp_path) -> None:
    recipe = load_recipe(RECIPES / "digits.yaml")
    assert recipe.distill.method == "kd" and recipe.teacher.name == "mlp"
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path) == recipe


def test_dotted_overrides_parse_yaml_values() -> None:
    recipe = load_recipe(RECIPES / "digits.yaml", ["distill.temperature=8", "student.kwargs.hidden=[4, 4]", "name=x"])
    assert recipe.distill.temperature == 8.0
    assert recipe.student.kwargs["hidden"] == [4, 4]
    assert recipe.name == "x"
    doc: dict = {}
    apply_override(doc, "a.b.c=1.5")
    assert doc == {"a": {"b": {"c": 1.5}}}


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("distill.temprature=8", "distill.temprature: unknown key"),
        ("distill.temperature=0", "distill.temperature"),
        ("distill.alpha=1.5", "distill.alpha"),
        ("train.epochs=many", "train.epochs"),
        ("distill.method=nope", "unknown method 'nope'"),
        ("distill.options={bogus: 1}", "distill.options for method 'kd'"),
        ("bogus.key=1", "bogus: unknown key"),
    ],
)
def test_bad_values_are_one_line_errors(override: str, fragment: str) -> None:
    with pytest.raises(DistillError) as err:
        load_recipe(RECIPES / "digits.yaml", [override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path) -> None:
    with pytest.raises(DistillError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(DistillError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(DistillError, match="form key.path=value"):
        load_recipe(RECIPES / "digits.yaml", ["novalue"])
    with pytest.raises(DistillError, match="YAML mapping"):
        validate([1, 2])


def test_yaml_cannot_execute_code(tmp_path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(DistillError):
        load_recipe(evil)
    assert not (tmp_path / "pwned").exists()


def test_schema_requires_models() -> None:
    doc = yaml.safe_load((RECIPES / "digits.yaml").read_text())
    del doc["student"]
    with pytest.raises(DistillError, match="student: Field required"):
        validate(doc)
    doc["student"] = {"name": "mlp", "kwargs": {"hidden": [3]}}
    recipe = validate(doc)
    assert isinstance(recipe, Recipe) and (recipe.student.name, recipe.student.kwargs) == ("mlp", {"hidden": [3]})
