import textwrap

import pytest

from cxr_audit.errors import UserInputError
from cxr_audit.spec import load_spec

VALID = """\
version: 1
concepts: [Cardiomegaly, Effusion, Edema, Pneumothorax, No Finding]
label_policy: {uncertain: ignore, overrides: {Edema: ones}}
cells:
  - id: COV-001
    all_of: [Pleural Effusion, Cardiomegaly]
    none_of: [Pneumothorax]
    min_count: 500
    subgroup: {sex: F, age: [60, 80], view: PA}
pairwise: {min_count: 200}
rules:
  - {if: Pneumothorax, excludes: No Finding}
"""


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_spec_resolves_aliases_and_generates_pairs(tmp_path):
    spec = load_spec(write(tmp_path, VALID))
    assert spec.concepts == ["Cardiomegaly", "Pleural Effusion", "Edema", "Pneumothorax", "No Finding"]
    assert spec.label_policy.uncertain_for("Edema") == "ones"
    assert spec.label_policy.uncertain_for("Cardiomegaly") == "ignore"
    cells = spec.all_cells()
    assert len(cells) == 1 + 10  # the explicit cell plus C(5, 2) pairs
    assert cells[0].subgroup.age == (60, 80)
    assert spec.rule_set().violations({"Pneumothorax", "No Finding"})


def test_misspelled_concept_names_file_line_key_and_suggestion(tmp_path):
    path = write(tmp_path, VALID.replace("all_of: [Pleural Effusion, Cardiomegaly]",
                                         "all_of: [Pleural Effusion, Cardiomegally]"))
    with pytest.raises(UserInputError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message and "line 6" in message and "cells.0.all_of.1" in message
    assert "Did you mean 'Cardiomegaly'" in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "version: 1\nconcepts: [Cardiomegaly\ncells: []\n")
    with pytest.raises(UserInputError, match=r"line 3.*not valid YAML"):
        load_spec(path)


@pytest.mark.parametrize("change, expected", [
    (("min_count: 500", "min_count: -1"), "greater than or equal to 0"),
    (("id: COV-001", "id: COV-001\n    colour: red"), "cells.0.colour"),
    (("age: [60, 80]", "age: [80, 60]"), "lo < hi"),
    (("none_of: [Pneumothorax]", "none_of: [Cardiomegaly]"), "both all_of and none_of"),
    (("concepts: [Cardiomegaly, Effusion, Edema, Pneumothorax, No Finding]",
      "concepts: [Cardiomegaly, Effusion, Edema, No Finding]"), "not in 'concepts'"),
])
def test_invalid_values_are_reported_with_their_key(tmp_path, change, expected):
    with pytest.raises(UserInputError, match=expected):
        load_spec(write(tmp_path, VALID.replace(*change)))


def test_duplicate_cell_ids_are_refused(tmp_path):
    text = VALID.replace("pairwise:", "  - {id: COV-001, all_of: [Edema], min_count: 1}\npairwise:")
    with pytest.raises(UserInputError, match="used twice"):
        load_spec(write(tmp_path, text))


def test_rule_needs_exactly_one_kind(tmp_path):
    text = VALID.replace("{if: Pneumothorax, excludes: No Finding}", "{if: Pneumothorax}")
    with pytest.raises(UserInputError, match="exactly one of 'implies' or 'excludes'"):
        load_spec(write(tmp_path, text))


def test_yaml_tags_that_run_code_are_refused(tmp_path):
    path = write(tmp_path, "!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        load_spec(path)


def test_shipped_specs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "coverage_specs").glob("*.yaml")):
        assert load_spec(path).concepts
