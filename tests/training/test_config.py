"""``--config`` files: sections, defaults, and errors that name the file and the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.config import ConfigError, FeatureConfig
from training.config import TrainConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "leadscore.yaml"
    path.write_text(text)
    return path


def test_each_section_is_read_and_a_missing_one_keeps_the_defaults(tmp_path):
    only_training = write(tmp_path, "training:\n  seed: 7\n")
    assert TrainConfig.from_yaml(only_training).seed == 7
    assert FeatureConfig.from_yaml(only_training) == FeatureConfig()
    only_features = write(tmp_path, "features:\n  half_life_days: 14\n")
    assert FeatureConfig.from_yaml(only_features).half_life_days == 14
    assert TrainConfig.from_yaml(only_features) == TrainConfig()
    both = write(tmp_path, "features:\n  horizon_days: 60\ntraining:\n  seed: 3\n")
    assert (FeatureConfig.from_yaml(both).horizon_days, TrainConfig.from_yaml(both).seed) == (60, 3)
    assert FeatureConfig.from_yaml(write(tmp_path, "features:\n")) == FeatureConfig()
    assert TrainConfig.from_yaml(None) == TrainConfig()


def test_a_file_without_sections_is_the_section_asked_for(tmp_path):
    assert TrainConfig.from_yaml(write(tmp_path, "seed: 11\n")).seed == 11


@pytest.mark.parametrize("text, match", [
    ("training:\n  split:\n    gap_days: -1\n", r"training\.split\.gap_days: Input should be greater"),
    ("training:\n  sede: 1\n", r"training\.sede: Extra inputs are not permitted"),
    ("features:\n  half_life_days: soon\n", r"features\.half_life_days: Input should be a valid number"),
    ("training:\n  band_thresholds: {A: 50, B: 80, C: 20}\n", "strictly decreasing"),
    ("training:\n  band_thresholds: {A: 95, B: 80}\n", r"exactly the keys \['A', 'B', 'C'\]"),
    ("training: [1, 2]\n", "training: expected a mapping"),
    ("- just\n- a list\n", "expected a mapping with features / training sections"),
    ("training:\n  seed: [1\n", r"not valid YAML \(line \d+, column \d+\)"),
])
def test_bad_settings_name_the_file_and_the_setting(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as e:
        TrainConfig.from_yaml(path) if "features:" not in text else FeatureConfig.from_yaml(path)
    assert str(path) in str(e.value)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        TrainConfig.from_yaml(tmp_path / "nope.yaml")
