"""The gallery stage: panels of a few CARS edits (source, region, edit, difference) for the report, and of the
CARS edits the realism discriminator found least real."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.provenance import atomic_write_bytes, atomic_write_json, sha256_file
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.synthesize import read_records, read_summary


class GalleryStage:
    name = "gallery"
    needs = ("synthetic", "realism")

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.layout = ctx.run.gallery
        self.folder = self.layout.folder

    def outputs(self) -> list[Path]:
        return [self.layout.document]

    def inputs(self) -> dict:
        ctx = self.ctx
        return {"synthesis": sha256_file(ctx.run.synthesis("cars").summary), "data": ctx.data_sha256,
                "least_real": self._least_real(),
                "size": ctx.config.gallery_size}

    def _least_real(self) -> list[dict] | None:
        """The CARS edits the realism discriminator found least real (what the gallery shows of realism: its
        intervals may change with --bootstrap without a panel changing); None before the realism stage ran."""
        from cxr_audit.stages.realism import read_realism

        if not self.ctx.run.realism.document.exists():
            return None
        cars = read_realism(self.ctx).modes.get("cars")
        return cars.discriminator.most_confident if cars and cars.discriminator else []

    def run(self) -> None:
        import numpy as np
        from PIL import Image

        from cxr_audit.audit.document import GalleryDocument, GalleryItem
        from cxr_audit.data.images import load_resized
        from cxr_audit.report.gallery import gallery_strip, pick_edits
        ctx, layout = self.ctx, self.layout
        synthesis = ctx.run.synthesis("cars")
        layout.folder.mkdir(parents=True, exist_ok=True)
        size = int(read_summary(synthesis).generator["image_size"])
        manifest = ctx.frontal("all")
        rows = manifest.frame.set_index("image_id", drop=False)
        records = read_records(synthesis)
        picked = {pick["edit_id"]: pick["score"] for pick in self._least_real() or []}
        shown = [(record, None) for record in pick_edits(records, ctx.config.gallery_size)]
        by_id = {record.edit_id: record for record in records}
        shown += [(by_id[edit_id], score) for edit_id, score in picked.items()]  # least real first
        items = []
        for record, score in shown:
            source = load_resized(manifest.resolve_image(rows.loc[record.source_image_id, "path"]), size)
            edited = load_resized(synthesis.image(record.edit_id), size)
            region = np.asarray(Image.open(synthesis.mask(record.edit_id))) > 127
            path = layout.image(record.edit_id)
            atomic_write_bytes(path, gallery_strip(source, edited, region))
            qc = record.qc.model_dump()
            items.append(GalleryItem(
                edit_id=record.edit_id, cell_id=record.cell_id,
                operation=", ".join(o.label for o in record.operations),
                image=layout.relative_image(record.edit_id), image_sha256=sha256_file(path),
                qc={k: qc[k] for k in ("passed", "outside_mae", "outside_ssim", "alignment", "ground_truth_mae",
                                       "reasons")}, discriminator_score=score))
        atomic_write_json(layout.document, GalleryDocument(items=items).model_dump(mode="json"))
