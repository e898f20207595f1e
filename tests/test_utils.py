"""Atomic outputs are readable like any file the user creates (not mkstemp's owner-only 0600)."""

from __future__ import annotations

import os
import stat

from tisdpo.utils import write_json


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    saved = os.umask(0o022)
    try:
        write_json(str(tmp_path / "results.json"), {"a": 1})
    finally:
        os.umask(saved)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
    assert (tmp_path / "results.json").read_text() == '{\n  "a": 1\n}\n'
