"""The training config: presets with `extends:` and `--set` overrides, typed by the dataclasses (OmegaConf),
read through the bounded YAML loader; errors name the file and the key."""

from pathlib import Path

import pytest

from dataflux.yaml_io import YamlError
from modeling.train import TrainConfig

BASE = """name: base
model:
  encoder: {num_mel_bins: 80, d_model: 32}
  llm: {model_type: qwen3, hidden_size: 32}
train:
  lr: 3e-4
  max_steps: 100
  category_weights: {beep_count: 2.0, loudness: 0.5}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_numbers_written_without_a_dot_become_floats(tmp_path):
    cfg = TrainConfig.load(_write(tmp_path, "base.yaml", BASE), ["train.max_minutes=2"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_minutes == 2.0 and isinstance(cfg.train.max_minutes, float)
    assert cfg.train.betas == (0.9, 0.98) and cfg.name == "base"


def test_a_key_an_extending_preset_sets_replaces_the_base_value_whole(tmp_path):
    _write(tmp_path, "base.yaml", BASE)
    child = _write(tmp_path, "child.yaml", "extends: base.yaml\nname: child\n"
                                          "model: {encoder: {num_mel_bins: 80, d_model: 64}}\n"
                                          "train: {category_weights: {click_tempo: 3}}\n")
    cfg = TrainConfig.load(child)
    assert cfg.name == "child" and cfg.train.max_steps == 100  # the base's other keys stay
    assert cfg.model.encoder == {"num_mel_bins": 80, "d_model": 64}
    assert cfg.train.category_weights == {"click_tempo": 3.0}  # not merged with the base's mapping


def test_an_override_of_a_mapping_replaces_it_and_a_dotted_one_sets_one_key(tmp_path):
    base = _write(tmp_path, "base.yaml", BASE)
    assert TrainConfig.load(base, ["train.category_weights={duration: 0.3}"]).train.category_weights == {"duration": 0.3}
    assert TrainConfig.load(base, ["train.category_weights.duration=0.3"]).train.category_weights == {
        "beep_count": 2.0, "loudness": 0.5, "duration": 0.3}


@pytest.mark.parametrize("override,message", [
    ("train.max_steps=1.5", r"base\.yaml: train\.max_steps: .*Integer"),
    ("train.lr=fast", r"base\.yaml: train\.lr: .*Float"),
    ("model.n_expert=4", r"base\.yaml: model: unknown key\(s\) \['n_expert'\]; known: .*n_experts"),
    ("train.precision=fp16", r"base\.yaml: train\.precision: 'fp16' is not one of auto, bf16, fp32"),
    ("train.max_steps", r"expected section\.key=value"),
])
def test_a_bad_value_is_refused_naming_the_file_and_the_key(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.load(_write(tmp_path, "base.yaml", BASE), [override])


def test_a_path_names_an_environment_variable_not_an_interpolation(tmp_path, monkeypatch):
    path = _write(tmp_path, "real.yaml", "model: {encoder_path: '${DF_TEST_ENCODER}/enc', llm_path: /q}\n")
    with pytest.raises(ValueError, match=r"model\.encoder_path: '\$\{DF_TEST_ENCODER\}/enc' names an unset"):
        TrainConfig.load(path)
    monkeypatch.setenv("DF_TEST_ENCODER", "/models/whisper")
    assert TrainConfig.load(path).model.encoder_path == "/models/whisper/enc"


def test_an_alias_bomb_preset_is_refused_before_it_expands(tmp_path):
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcde", "bcdef"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(YamlError, match="expands to over"):
        TrainConfig.load(_write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n"))


def test_the_presets_load_and_their_ids_follow_the_config():
    tiny = TrainConfig.load("modeling/configs/tiny.yaml")
    multitask = TrainConfig.load("modeling/configs/tiny-multitask.yaml")
    assert multitask.model.encoder == tiny.model.encoder and multitask.model.tokenizer_words
    assert multitask.train.task_weights == {"mcq": 1.0, "asr": 2.0, "caption": 0.15, "open_qa": 0.15}
    assert tiny.sha256() == TrainConfig.load("modeling/configs/tiny.yaml").sha256() != multitask.sha256()
    assert tiny.sha256() != TrainConfig.load("modeling/configs/tiny.yaml", ["train.seed=1"]).sha256()
