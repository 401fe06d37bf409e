"""The charts say what the numbers say: an empty cell is visible, a subgroup is named, the legend names the
split that was counted."""

from conftest import coverage_of

from cxr_audit.report.figures import coverage_figure


def test_coverage_chart_marks_empty_cells_names_subgroups_and_the_split(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,patient_id,sex,Cardiomegaly,Pleural Effusion\n"
                      "a.png,p1,F,1,1\nb.png,p2,M,1,0\nc.png,p3,F,0,1\n")
    report = coverage_of(labels, "version: 1\nconcepts: [Cardiomegaly, Pleural Effusion]\ncells:\n"
                                 "  - {id: BOTH, all_of: [Cardiomegaly, Pleural Effusion], min_count: 5}\n"
                                 "  - {id: NONE, all_of: [Cardiomegaly], none_of: [Pleural Effusion], min_count: 5,"
                                 " subgroup: {sex: F}}\n")
    assert [c.count for c in report.cells] == [1, 0]
    figure = coverage_figure(report.cells, split="all")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["BOTH", "NONE (sex=F)"]
    marked = [tuple(offset) for collection in ax.collections for offset in collection.get_offsets()]
    assert (0.0, 1.0) in marked  # the empty cell's dot at x = 0, row 1
    assert "real images (all splits)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "real training images" in [t.get_text() for t in coverage_figure(report.cells).axes[0].get_legend().get_texts()]
