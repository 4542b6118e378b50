"""The training config: what to build (`ModelSpec`), how to train (`TrainSpec`), read from a YAML preset.

The dataclasses are the schema. OmegaConf turns them into a structured config, so a preset and the
`--set section.key=value` overrides are type-checked and coerced against them (YAML reads `3e-4`
without a dot as a string: it becomes a float here; `fast` for a float is an error naming the key):

    preset  --extends-->  base preset      a key the preset sets replaces the base's value whole
    + overrides (section.key=value)       values parsed as YAML, each replacing what it names
    -> OmegaConf.merge(schema, doc)       unknown keys and wrong types refused, with file and key
    -> check_config                       the rules a type cannot say (modes, task weights, paths)

Presets are read with `dataflux.yaml_io.read_yaml` (safe types, an alias-expansion budget, a key
given twice is an error).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dataflux.yaml_io import cut, read_yaml
from modeling.data import TASKS
from modeling.lora import DEFAULT_TARGETS
from modeling.pretrained.packaged import resolve_path

SECTIONS = ("model", "train", "name")
MIXTURES = ("category_weights", "task_weights")  # TrainSpec fields that map a name to a weight


@dataclass
class ModelSpec:
    """What to build. Either `encoder`/`llm` config dicts (a model from scratch, e.g. the tiny preset)
    or `encoder_path`/`llm_path` local checkpoints (e.g. whisper-large-v3 and Qwen3-1.7B)."""

    encoder: dict[str, Any] | None = None  # WhisperConfig fields
    llm: dict[str, Any] | None = None  # causal-LM config fields, with model_type
    encoder_path: str | None = None  # local Whisper checkpoint (full model or encoder)
    llm_path: str | None = None  # local causal-LM checkpoint, with its tokenizer
    tokenizer_path: str | None = None  # default: llm_path; with neither, a BPE is trained on the version
    tokenizer_vocab_size: int = 1000  # size of that trained BPE
    tokenizer_whole_lines: bool = False  # that BPE may merge whole lines (one token per option line)
    tokenizer_words: bool = False  # with whole lines: other lines (transcripts, captions) cut at words
    dtype: str | None = None  # load dtype for real checkpoints, e.g. "bfloat16"
    system_prompt: str | None = None
    adapter: str = "moe"  # moe | linear
    stack_factor: int = 4
    n_experts: int = 8
    top_k: int = 2
    n_shared: int = 1
    expert_hidden: int | None = None
    aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.0
    adapter_norm_init: float = 1.0
    audio_scale: str = "fixed"  # fixed | text (audio embeddings at the text embeddings' RMS times the gain)


@dataclass
class TrainSpec:
    """How to train. Steps are optimizer steps; one step consumes `grad_accum` batches per process."""

    llm: str = "full"  # full | lora | frozen
    encoder: str = "train"  # train | frozen
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    batch_size: int = 16
    max_batch_seconds: float | None = None  # cap on audio seconds per batch (length bucketing)
    grad_accum: int = 1
    lr: float = 1e-3
    llm_lr: float | None = None  # default lr
    encoder_lr: float | None = None  # default lr
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 50
    max_steps: int = 1000
    max_minutes: float | None = None  # stop early (with a checkpoint) when the wall time is spent
    anneal: str = "steps"  # steps: cosine over max_steps | budget: over max_steps or max_minutes, first spent
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | bf16 | fp32
    num_threads: int | None = None  # torch intra-op threads (1 is fastest on a busy 2-core machine)
    prefetch: int = 2  # batches prepared ahead in a background thread
    cache_mb: float = 0.0  # > 0: keep tokenized examples and features in memory (a small version, many epochs)
    seed: int = 0
    zero_audio: bool = False  # train on silence: the audio-blind baseline
    pack_tokens: int = 0  # > 0: pack examples into rows of at most this many tokens
    balance_categories: float = 0.0  # 0: rows as they come; 1: every category (l3) equally often per epoch
    category_weights: dict[str, float] = field(default_factory=dict)  # l3 -> mixture weight on its share
    # a curriculum before category_weights: [{epochs: N, category_weights: {...}}, ...], stage by stage
    category_stages: list[dict[str, Any]] = field(default_factory=list)
    shuffle_options: bool = False  # multiple-choice options in a new order each epoch (answer re-lettered)
    require_measured: bool = False  # train only on rows a measurement of the audio verified (verification = measured)
    # train on questions answerable without their audio too (audio_needed = false); by default they are left
    # out of the train split (validation and test keep them, so runs with and without compare on one test set)
    include_text_answerable: bool = False
    hard_example_weight: float = 1.0  # rows our own model answered wrong (model_correct False) drawn this x as often
    # task -> draws per epoch as a multiple of its row count (unnamed: 1.0; 0 leaves the task out);
    # inside each task the category weights and stages apply as before
    task_weights: dict[str, float] = field(default_factory=dict)
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 2
    eval_every: int = 0  # > 0: teacher-forced answer accuracy on validation rows every N steps (cheap)
    eval_every_rows: int = 256
    stop_at_accuracy: float | None = None  # stop once every category's validation accuracy reaches this
    eval_split: str = "test"
    eval_batch_size: int = 64
    eval_max_rows: int | None = None
    eval_zero_audio: bool = True  # also score the model with the audio zeroed
    max_new_tokens: int = 16
    max_new_tokens_text: int = 48  # transcripts and captions
    eval_task_rows: int = 64  # per non-mcq task: validation rows scored teacher-forced every eval_every steps
    eval_asr_rows: int = 32  # validation transcripts generated every eval_every steps (WER in metrics.jsonl)
    eval_task_max_rows: int | None = 300  # per non-mcq task, in the final evaluation


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    name: str = "run"

    @classmethod
    def load(cls, path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
        """Read a YAML preset and apply `section.key=value` overrides (values parsed as YAML)."""
        return load_config(path, overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The preset at `path` (its `extends:` chain resolved) with `overrides` applied, type-checked."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training config {path} does not exist (presets: modeling/configs/*.yaml)")
    doc = _with_base(path)
    if "name" not in doc:
        doc.name = path.stem
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"override {item!r}: expected section.key=value, e.g. train.max_steps=100")
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]  # YAML, 3e-4 a float
        OmegaConf.update(doc, key, _escaped(parsed), merge=False)
    return typed_config(doc, str(path))


def _with_base(path: Path) -> DictConfig:
    """A preset with `extends: other.yaml` (relative to it): the other preset, with each key this one
    sets under `model`/`train` replacing the base's value whole (a mapping is not merged key by key)."""
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with model, train, name; got {type(raw).__name__}")
    base_name = raw.pop("extends", None)
    doc = OmegaConf.create(_escaped(raw))
    if base_name is None:
        return doc
    base_path = path.parent / str(base_name)
    if not base_path.exists():
        raise FileNotFoundError(f"{path}: extends {base_name!r}, but {base_path} does not exist")
    base = _with_base(base_path)
    for key, value in doc.items():
        if key in ("model", "train") and isinstance(value, DictConfig) and isinstance(base.get(key), DictConfig):
            for inner, inner_value in value.items():
                OmegaConf.update(base, f"{key}.{inner}", inner_value, merge=False)
        else:
            OmegaConf.update(base, str(key), value, merge=False)
    return base


def _escaped(value: Any) -> Any:
    """`value` with `${` in strings escaped: a preset's `${WHISPER_LARGE_V3}` names an environment
    variable (expanded by `check_config`), not an OmegaConf interpolation."""
    if isinstance(value, str):
        return value.replace("${", "\\${")
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def typed_config(doc: DictConfig, origin: str) -> TrainConfig:
    """`doc` merged onto the structured schema and checked; errors name `origin` and the key."""
    unknown = sorted(set(doc.keys()) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{origin}: unknown top-level key(s) {unknown}; expected model, train, name")
    train = doc.get("train")
    for name in MIXTURES:
        value = train.get(name) if isinstance(train, DictConfig) else None
        if value is not None and not isinstance(value, DictConfig):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ValueError(f"{origin}: train.{name}: expected a mapping category -> weight, got {cut(repr(shown))}")
    for section in ("model", "train"):
        if doc.get(section) is None:
            doc[section] = {}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), doc)
        cfg = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        section, _, key = str(e.full_key).partition(".")
        spec = {"model": ModelSpec, "train": TrainSpec}.get(section)
        known = sorted(f.name for f in dataclasses.fields(spec)) if spec else list(SECTIONS)
        raise ValueError(f"{origin}: {section}: unknown key(s) {[key.split('.')[0]]}; known: {known}") from None
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        why = cut(str(e).splitlines()[0], 300)  # the message quotes the value, which may be long
        if any(key.startswith(f"train.{name}.") for name in MIXTURES):
            why = f"weights must be numbers ({why})"
            key = key.rsplit(".", 1)[0]
        raise ValueError(f"{origin}: {key}: {why}") from None
    check_config(cfg, origin)
    return cfg


def _mixture_weights(value: Any, where: str) -> dict[str, float]:
    """A category -> weight mapping from a config, with numbers as floats."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping category -> weight, got {value!r}")
    try:
        return {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{where}: weights must be numbers, got {value!r}") from None


def check_config(cfg: TrainConfig, origin: str) -> None:
    """The rules the types cannot say; environment variables in paths expanded, `packaged:<name>` paths
    resolved to the converted folder (modeling.pretrained.packaged)."""
    _check_train(cfg.train, f"{origin}: train")
    _check_model(cfg.model, f"{origin}: model")


def _check_train(spec: TrainSpec, where: str) -> None:
    if spec.llm not in ("full", "lora", "frozen"):
        raise ValueError(f"{where}.llm: {spec.llm!r} is not one of full, lora, frozen")
    if spec.encoder not in ("train", "frozen"):
        raise ValueError(f"{where}.encoder: {spec.encoder!r} is not one of train, frozen")
    unknown_tasks = sorted(set(spec.task_weights) - set(TASKS))
    negative = {k: v for k, v in spec.task_weights.items() if v < 0}
    if unknown_tasks or negative or spec.task_weights and not trained_tasks(spec):
        raise ValueError(f"{where}.task_weights: expected task -> weight >= 0 for tasks {list(TASKS)} with "
                         f"at least one above 0, got {spec.task_weights!r}")
    if not all(isinstance(st, dict) for st in spec.category_stages):
        raise ValueError(f"{where}.category_stages: expected a list of {{epochs, category_weights}} mappings, "
                         f"got {spec.category_stages!r}")
    for i, st in enumerate(spec.category_stages):
        extra = sorted(set(st) - {"epochs", "category_weights"})
        if extra:
            raise ValueError(f"{where}.category_stages[{i}]: unknown key(s) {extra} (epochs, category_weights)")
        st["category_weights"] = _mixture_weights(st.get("category_weights") or {},
                                                  f"{where}.category_stages[{i}].category_weights")
    if spec.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"{where}.precision: {spec.precision!r} is not one of auto, bf16, fp32")
    if spec.anneal not in ("steps", "budget") or (spec.anneal == "budget" and not spec.max_minutes):
        raise ValueError(f"{where}.anneal: {spec.anneal!r} must be steps, or budget with max_minutes set")


def _check_model(spec: ModelSpec, where: str) -> None:
    for name in ("encoder_path", "llm_path", "tokenizer_path"):
        value = getattr(spec, name)
        if value:
            value = os.path.expanduser(os.path.expandvars(str(value)))
            if "$" in value:
                raise ValueError(f"{where}.{name}: {getattr(spec, name)!r} names an unset environment variable; "
                                 f"set it or pass --set model.{name}=/local/path")
            if value.startswith("packaged:"):
                value = resolve_path(value)
            setattr(spec, name, value)
    if spec.encoder is None and spec.encoder_path is None:
        raise ValueError(f"{where}: give encoder (config fields) or encoder_path (a local Whisper checkpoint)")
    if spec.llm is None and spec.llm_path is None:
        raise ValueError(f"{where}: give llm (config fields) or llm_path (a local causal-LM checkpoint)")


def trained_tasks(spec: TrainSpec) -> list[str]:
    """The tasks a run trains on: every task whose weight is not 0 (an unnamed task weighs 1)."""
    return [t for t in TASKS if spec.task_weights.get(t, 1.0) > 0]


def positive_task_weights(spec: TrainSpec) -> dict[str, float]:
    return {t: w for t, w in spec.task_weights.items() if w > 0}


def training_id_for(version: str, config: TrainConfig) -> str:
    return f"{version}-{config.name}-{config.sha256()[:10]}"
