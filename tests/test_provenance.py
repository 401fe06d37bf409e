"""What the tool writes: whole files only, with the mode the user's umask gives a new file."""

import os
import stat

import pytest

from cxr_audit.provenance import atomic_write_bytes, atomic_write_json


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "report.pdf", b"%PDF")
        atomic_write_json(tmp_path / "audit.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("report.pdf", "audit.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
