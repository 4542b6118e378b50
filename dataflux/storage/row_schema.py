"""The sample row as stored: one Parquet row = one verified training example about one clip.

`task` says which kind: `mcq` (a multiple-choice question; rows written before the column existed
read as mcq), `asr` (the clip's transcript), `caption` (the clip's verified caption) or `open_qa` (a
question with a short free-form answer). Rows without choices (every task but mcq) leave `choices`
empty and `answer_index` None.

`SAMPLE_SCHEMA` is the Arrow form of the row contract. `audio` is `struct<bytes: binary, path: string>`
(plain `binary`, not `large_binary`) because that is the layout `datasets` recognises as an `Audio`
feature; together with `hf_features_metadata()` in the schema metadata, `datasets.load_dataset("parquet")`
hands back decodable audio without any extra casting.

`row_content_sha256` hashes what a row *says* (everything except who ran it and when): two runs that
produce the same samples produce the same hashes, which is what makes a version's `content_sha256`
comparable across runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pyarrow as pa

SAMPLING_RATE = 16000
AUDIO_COLUMN = "audio"

# Columns left out of the content hash: they describe the run, not the sample.
_VOLATILE_COLUMNS = frozenset({"run_id", "code_version", "row_sha256"})
# Fields left out inside each entry of `calls`: a cache hit says nothing about the content.
_VOLATILE_CALL_FIELDS = frozenset({"cached"})

_QUALITY = pa.struct([
    ("duration_s", pa.float64()),
    ("peak", pa.float64()),
    ("rms_dbfs", pa.float64()),
    ("clipping_ratio", pa.float64()),
    ("silence_ratio", pa.float64()),
    ("snr_db", pa.float64()),
])
_ANSWER = pa.struct([
    ("answerer", pa.string()),
    ("sees_audio", pa.bool_()),
    ("answer_index", pa.int32()),
    ("answer_text", pa.string()),
    ("reasoning", pa.string()),
    ("model", pa.string()),
])
_VERDICT = pa.struct([
    ("consensus", pa.bool_()),
    ("consistency_with_caption", pa.string()),
    ("winner", pa.string()),
    ("final_action", pa.string()),
    ("reasoning", pa.string()),
])
_CHECK = pa.struct([("name", pa.string()), ("passed", pa.bool_()), ("detail", pa.string())])
_CALL = pa.struct([
    ("step", pa.string()),
    ("backend", pa.string()),
    ("model", pa.string()),
    ("prompt_sha256", pa.string()),
    ("params", pa.string()),  # JSON text of the sampling parameters
    ("seed", pa.int64()),
    ("tokens_in", pa.int64()),
    ("tokens_out", pa.int64()),
    ("cost_usd", pa.float64()),
    ("cached", pa.bool_()),
])
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

SAMPLE_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("source", pa.string()),
    ("source_id", pa.string()),
    ("license", pa.string()),
    (AUDIO_COLUMN, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("sampling_rate", pa.int32()),
    ("duration_s", pa.float64()),
    ("audio_sha256", pa.string()),
    ("split", pa.string()),
    ("l0", pa.string()),
    ("l1", pa.string()),
    ("l2", pa.string()),
    ("l3", pa.string()),
    ("caption", pa.string()),
    ("transcript", pa.string()),
    ("caption_claims", pa.string()),  # JSON: leaf id -> value the caption states
    ("facts", pa.string()),  # JSON of measured facts
    ("quality", _QUALITY),
    ("question", pa.string()),
    ("choices", pa.list_(pa.string())),
    ("answer", pa.string()),
    ("answer_index", pa.int32()),
    ("reasoning", pa.string()),
    ("winner", pa.string()),
    ("answers", pa.list_(_ANSWER)),
    ("verdict", _VERDICT),
    ("checks", pa.list_(_CHECK)),
    ("rounds", pa.int32()),
    ("corrected_from_measurement", pa.bool_()),
    ("verification", pa.string()),  # measured | judged | metadata-only | unverified (None on rows written before it existed)
    ("model_correct", pa.bool_()),  # did our own trained model (a `local` answerer) pick the answer? None: not asked
    ("audio_needed", pa.bool_()),  # False: most text-only answerers picked the key (dataflux.steps.text_only); None: not asked
    ("text_only_answers", pa.list_(_ANSWER)),  # the answers given without audio or caption; None: not asked
    ("calls", pa.list_(_CALL)),
    ("tokens_in", pa.int64()),
    ("tokens_out", pa.int64()),
    ("cost_usd", pa.float64()),
    ("run_id", pa.string()),
    ("code_version", pa.string()),
    ("messages", pa.list_(_MESSAGE)),
    ("task", pa.string()),  # mcq | asr | caption | open_qa; None reads as mcq
    ("row_sha256", pa.string()),
])

COLUMNS: tuple[str, ...] = tuple(SAMPLE_SCHEMA.names)
# Columns a row may leave as None; every other column must carry a value.
NULLABLE_COLUMNS = frozenset({"transcript", "row_sha256", "verification", "model_correct", "task", "answer_index",
                              "audio_needed", "text_only_answers"})
# Columns added to the contract later: left out of the content hash when a row lacks them, so an
# older row keeps the hash it was written with.
_LATER_COLUMNS = frozenset({"verification", "model_correct", "audio_needed", "text_only_answers"})
VERIFICATION_LEVELS = ("measured", "judged", "metadata-only", "unverified")

TASKS: tuple[str, ...] = ("mcq", "asr", "caption", "open_qa")
DEFAULT_TASK = "mcq"


def row_task(row: dict[str, Any]) -> str:
    """The row's task; a row without one (written before the column existed) is a multiple-choice row."""
    return row.get("task") or DEFAULT_TASK

# Arrow primitive -> the dtype name `datasets.Value` uses in its JSON form.
_VALUE_DTYPES = {
    pa.string(): "string",
    pa.large_string(): "large_string",
    pa.binary(): "binary",
    pa.bool_(): "bool",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float32(): "float32",
    pa.float64(): "float64",
}


def _feature_json(t: pa.DataType) -> dict[str, Any]:
    """The `datasets.Features.to_dict()` form of one Arrow type (datasets >= 4: `List`, dict structs)."""
    if pa.types.is_struct(t):
        return {t.field(i).name: _feature_json(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t):
        return {"feature": _feature_json(t.value_type), "_type": "List"}
    if t in _VALUE_DTYPES:
        return {"dtype": _VALUE_DTYPES[t], "_type": "Value"}
    raise TypeError(f"no datasets feature mapping for Arrow type {t}")


def hf_features_dict(schema: pa.Schema = SAMPLE_SCHEMA) -> dict[str, Any]:
    """`datasets` feature JSON for every column; `audio` is declared as a 16 kHz Audio feature."""
    features: dict[str, Any] = {}
    for f in schema:
        if f.name == AUDIO_COLUMN:
            features[f.name] = {"sampling_rate": SAMPLING_RATE, "_type": "Audio"}
        else:
            features[f.name] = _feature_json(f.type)
    return features


def hf_features_metadata(schema: pa.Schema = SAMPLE_SCHEMA) -> dict[bytes, bytes]:
    """Schema metadata `{b"huggingface": b'{"info": {"features": {...}}}'}` that `datasets` reads back."""
    payload = {"info": {"features": hf_features_dict(schema)}}
    return {b"huggingface": json.dumps(payload).encode()}  # key order = column order


def sample_schema_with_metadata() -> pa.Schema:
    """`SAMPLE_SCHEMA` carrying the huggingface features metadata, as written into every shard."""
    return SAMPLE_SCHEMA.with_metadata(hf_features_metadata())


# --- content hash ------------------------------------------------------------------------------


def _canonical(value: Any, t: pa.DataType, where: str) -> Any:
    """Bring `value` to the form it has after an Arrow round trip, so a row hashes the same before
    it is written and after it is read back (ints in float columns, missing struct keys, bytes)."""
    if value is None:
        return None
    if pa.types.is_struct(t):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a dict for {t}, got {type(value).__name__}")
        return {
            t.field(i).name: _canonical(value.get(t.field(i).name), t.field(i).type, f"{where}.{t.field(i).name}")
            for i in range(t.num_fields)
        }
    if pa.types.is_list(t):
        if isinstance(value, (str, bytes, dict)):
            raise TypeError(f"{where}: expected a list for {t}, got {type(value).__name__}")
        return [_canonical(v, t.value_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if pa.types.is_floating(t):
        x = float(value)
        return x if math.isfinite(x) else repr(x)  # JSON has no NaN/inf; keep them distinguishable
    if pa.types.is_integer(t):
        return int(value)
    if pa.types.is_boolean(t):
        return bool(value)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return {"sha256": hashlib.sha256(bytes(value)).hexdigest()}
    return str(value)


def row_content_sha256(row: dict[str, Any]) -> str:
    """sha256 (hex) of a row's deterministic content.

    Left out: `run_id`, `code_version`, `row_sha256` itself, `cached` inside each call,
    `audio.path` (a file name, not content: the audio is hashed by its bytes), and `task` when it is
    mcq (so a question row hashes as it did before the column existed). Values are first
    normalised through `SAMPLE_SCHEMA`, so the hash of a row dict equals the hash of the same row
    read back from Parquet.
    """
    sid = row.get("sample_id", "?")
    content: dict[str, Any] = {}
    for f in SAMPLE_SCHEMA:
        if f.name in _VOLATILE_COLUMNS:
            continue
        if f.name == "task" and row_task(row) == DEFAULT_TASK:
            continue
        value = row.get(f.name)
        if f.name in _LATER_COLUMNS and value is None:
            continue
        if f.name == AUDIO_COLUMN and isinstance(value, dict):
            value = {"bytes": value.get("bytes"), "path": None}
        value = _canonical(value, f.type, f"row {sid!r} field {f.name!r}")
        if f.name == "calls" and value is not None:
            value = [
                None if c is None else {k: v for k, v in c.items() if k not in _VOLATILE_CALL_FIELDS}
                for c in value
            ]
        content[f.name] = value
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
