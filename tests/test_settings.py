"""Each setting is described once, in its field's metadata, and the CLI and docs are made from it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from napari_cosdd.cli import build_parser
from napari_cosdd.engine.config import ModelConfig, TrainConfig, preset_defaults, settings

ROOT = Path(__file__).resolve().parent.parent
ALL = settings(TrainConfig) + settings(ModelConfig)


def test_every_field_has_a_description_of_its_own():
    assert [s.name for s in ALL] == [f.name for c in (TrainConfig, ModelConfig) for f in dataclasses.fields(c)]
    for s in ALL:
        assert s.help != s.name and len(s.help.split()) >= 3 and s.help.endswith("."), s.name
    helps = [s.help for s in ALL]
    assert len(set(helps)) == len(helps), "two settings share one description"


@pytest.mark.parametrize("s", ALL, ids=[s.name for s in ALL])
def test_what_the_default_looks_like_reads_back_as_the_default(s):
    text = s.shown_default()
    if s.kind is bool or s.choices:
        return  # check boxes and choices are not typed
    assert s.parse(text) == s.default


def test_typed_text_is_parsed_and_bad_text_names_the_setting():
    by_name = {s.name: s for s in ALL}
    assert by_name["learning_rate"].parse(" 3e-4 ") == 3e-4
    assert by_name["crop_size"].parse("128") == 128 and isinstance(by_name["crop_size"].parse("128.0"), int)
    assert by_name["clip_outliers"].parse("0.1, 99.9") == (0.1, 99.9)
    assert by_name["clip_outliers"].parse("") is None and by_name["threads"].parse("") is None
    assert by_name["ar_dilations"].parse("1 2 4") == (1, 2, 4)
    assert by_name["seed"].parse("none") is None and by_name["seed"].parse("7") == 7
    with pytest.raises(ValueError, match="clip outliers.*2 numbers"):
        by_name["clip_outliers"].parse("0.1")
    with pytest.raises(ValueError, match="crop size"):
        by_name["crop_size"].parse("12.5")
    with pytest.raises(ValueError, match="learning rate"):
        by_name["learning_rate"].parse("fast")


def test_preset_defaults_fill_every_model_field():
    values = preset_defaults("cpu")
    assert set(values) == {f.name for f in dataclasses.fields(ModelConfig)}
    assert values["levels"] == 4 and values["ar_kernel"] == ModelConfig.ar_kernel
    with pytest.raises(ValueError, match="unknown preset"):
        preset_defaults("huge")


def test_the_command_line_help_is_made_from_the_descriptions():
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    text = " ".join(train.format_help().split())
    for s in ALL:
        if s.flag:
            assert s.flag in text, s.name
            assert " ".join(s.help.split()) in text, f"--help lacks the description of {s.name}"


def test_the_settings_page_in_docs_is_generated_from_the_descriptions():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_settings_doc.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    for s in ALL:
        assert f"| `{s.name}` |" in page and s.help in page
