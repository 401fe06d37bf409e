import pytest

from cxr_audit import concepts
from cxr_audit.errors import UserInputError


@pytest.mark.parametrize("alias, canonical", [
    ("Effusion", "Pleural Effusion"),            # NIH
    ("Pleural_Thickening", "Pleural Thickening"),  # NIH / torchxrayvision
    ("pleural effusion", "Pleural Effusion"),
    ("Enlarged Cardiomediastinum", "Enlarged Cardiomediastinum"),
    ("Lung Lesion", "Lung Lesion"),
    ("no-finding", "No Finding"),
])
def test_aliases_resolve_to_canonical_names(alias, canonical):
    assert concepts.resolve(alias) == canonical


def test_every_torchxrayvision_pathology_name_resolves():
    xrv_names = ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
                 "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
                 "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
    assert all(concepts.try_resolve(n) in concepts.CONCEPT_NAMES for n in xrv_names)


def test_unknown_name_suggests_the_close_match():
    with pytest.raises(UserInputError, match="Did you mean 'Cardiomegaly'"):
        concepts.resolve("Cardiomegally")


def test_vocabulary_is_chexpert_14_plus_nih_extras():
    assert len(concepts.CHEXPERT_14) == 14
    assert set(concepts.NIH_14) <= set(concepts.CONCEPT_NAMES)
    assert all(set(c.regions) <= set(concepts.REGIONS) for c in concepts.CONCEPTS)


def test_no_finding_excludes_findings_but_not_support_devices():
    rules = concepts.RuleSet()
    assert rules.violations({"No Finding", "Pleural Effusion"})
    assert rules.violations({"No Finding", "Support Devices"}) == []


def test_hierarchy_is_transitive():
    rules = concepts.RuleSet()
    # Nodule -> Lung Lesion -> Lung Opacity: a nodule with no opacity is implausible.
    reasons = rules.violations({"Nodule"}, {"Lung Opacity"})
    assert reasons and "Lung Opacity is required negative" in reasons[0]
    assert rules.violations({"Cardiomegaly"}, {"Enlarged Cardiomediastinum"})
    assert rules.violations({"Cardiomegaly", "Pleural Effusion"}, {"Pneumothorax"}) == []


def test_user_rules_extend_the_defaults():
    rules = concepts.RuleSet().extended([concepts.Rule("Pneumothorax", "excludes", "Edema", "spec")])
    assert any("(spec)" in r for r in rules.violations({"Pneumothorax", "Edema"}))
