"""The gallery stage: panels of a few CARS edits (source, region, edit, difference) for the report."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.provenance import atomic_write_json, sha256_file
from cxr_audit.stages.context import RunContext


class GalleryStage:
    name = "gallery"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.layout = ctx.run.gallery
        self.folder = self.layout.folder

    def outputs(self) -> list[Path]:
        return [self.layout.document]

    def inputs(self) -> dict:
        ctx = self.ctx
        return {"synthesis": sha256_file(ctx.run.synthesis("cars").summary), "data": ctx.data_sha256,
                "size": ctx.config.gallery_size}

    def run(self) -> None:
        from cxr_audit.report.gallery import build_gallery

        ctx = self.ctx
        self.layout.folder.mkdir(parents=True, exist_ok=True)
        document = build_gallery(ctx.run.synthesis("cars"), self.layout, ctx.frontal("all"), ctx.config.gallery_size)
        atomic_write_json(self.layout.document, document.model_dump(mode="json"))
