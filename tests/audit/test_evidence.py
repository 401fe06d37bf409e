"""The evidence map: one data file per framework, each item judged against what the audit holds."""

import json

from cxr_audit.audit.evidence import Framework, FrameworkItem, evidence_map, frameworks


def test_every_framework_file_names_its_document_date_and_items():
    listed = frameworks()
    assert {f.framework for f in listed} == {"fda-ai-dsf-2025", "fda-pccp-2024", "eu-ai-act-annex-iv", "tripod-ai",
                                             "claim-2024"}
    for framework in listed:
        assert framework.document and framework.date[:4] in ("2024", "2025") and framework.numbering
        ids = [item.id for item in framework.items]
        assert len(ids) == len(set(ids)), framework.framework
        # what an audit cannot speak to is said plainly, never claimed
        assert any(item.status == "manufacturer" for item in framework.items) or framework.framework == "claim-2024"
    pccp = next(f for f in listed if f.framework == "fda-pccp-2024")
    protocol = next(i for i in pccp.items if i.id == "Modification protocol: performance evaluation")
    assert protocol.status == "filled" and "acceptance criteria" in protocol.note and "gate policy" in protocol.note


def test_an_item_needing_what_the_audit_lacks_is_only_partly_filled(audit_run):
    from cxr_audit.audit.document import load_audit

    out, _, _ = audit_run
    audit = load_audit(out / "audit.json")
    assert audit.reader_study is None
    item = FrameworkItem(id="x", item="realism judged by readers", where=["2"], status="filled",
                         requires=["reader_study", "probe"])
    manual = FrameworkItem(id="y", item="risk analysis", status="manufacturer")
    framework = Framework(framework="t", document="T", date="2025", numbering="n", items=[item, manual])
    judged = evidence_map(audit, [framework])["frameworks"][0]
    assert [i["status"] for i in judged["items"]] == ["partly", "manufacturer"]
    assert "lacks a scored reader study" in judged["items"][0]["note"] and "probe" not in judged["items"][0]["note"]
    assert judged["counts"] == {"filled": 0, "partly": 1, "manufacturer": 1}


def test_the_audit_holds_the_evidence_map_and_the_data_sheet(audit_run):
    out, _, _ = audit_run
    document = json.loads((out / "audit.json").read_text())
    evidence = {f["framework"]: f for f in document["evidence"]["frameworks"]}
    assert len(evidence) == 5
    tripod = {i["id"]: i for i in evidence["tripod-ai"]["items"]}
    assert tripod["24"]["status"] == "filled"  # the recalibrated arm is in the audit
    assert tripod["27"]["status"] == "manufacturer"
    sheet = document["data_sheet"]
    assert set(sheet["partitions"]) == {"train", "val", "test", "synthetic (accepted CARS edits)"}
    assert sheet["partitions"]["test"]["images"] == document["scope"]["n_test_images"]
    accepted = document["synthesis"]["cars"]["accepted"]
    assert sheet["partitions"]["synthetic (accepted CARS edits)"]["images"] == accepted
    assert sheet["near_duplicates"]["checked"] and sheet["patient_overlap"]["patients_in_several_partitions"] == 0
