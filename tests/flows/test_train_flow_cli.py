"""The Prefect train flow and the `dataflux train` / `dataflux generate` commands."""

import json

import pytest
import yaml

from dataflux.storage.catalog import Catalog, VersionNotFinalized
from modeling.synthetic_version import tone_wav, write_tone_version
from tests.helpers.micro_config import MICRO


def _config(tmp_path) -> str:
    doc = json.loads(json.dumps(MICRO))
    doc["train"].update(max_steps=3, eval_max_rows=3, eval_zero_audio=False)
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.slow
def test_train_flow_trains_records_and_refuses_drafts(tmp_path):
    from flows.train import train_flow

    catalog = tmp_path / "catalog.duckdb"
    vid = write_tone_version(catalog, tmp_path / "shards", n_clips=12, n_shards=1, max_seconds=0.6)
    draft = write_tone_version(catalog, tmp_path / "shards", n_clips=4, n_shards=1, finalize=False)
    with pytest.raises(VersionNotFinalized):
        train_flow(version=draft, config=_config(tmp_path), catalog_path=str(catalog))
    result = train_flow(version=vid, config=_config(tmp_path), catalog_path=str(catalog),
                        output_dir=str(tmp_path / "run"), overrides=["train.max_steps=2"])
    assert result["status"] == "completed" and result["metrics"]["steps"] == 2
    (record,) = Catalog(catalog).trainings(vid)
    assert record["status"] == "completed" and record["checkpoint"] == result["checkpoint"]
    assert Catalog(catalog).trainings(draft) == []


def test_cli_trains_then_generates_an_answer_for_a_wav_file(tmp_path, capsys):
    from cli.train import main

    catalog = tmp_path / "catalog.duckdb"
    vid = write_tone_version(catalog, tmp_path / "shards", n_clips=12, n_shards=1, max_seconds=0.6)
    from modeling.train import train

    result = train(vid, _config(tmp_path), catalog_path=catalog, output_dir=tmp_path / "run", log=lambda *_: None)
    wav = tmp_path / "tone.wav"
    wav.write_bytes(tone_wav(440.0, 0.5))
    question = "What is the approximate pitch of the tone in this recording?\n(A) 110 Hz\n(B) 220 Hz\n(C) 440 Hz\n(D) 880 Hz"
    capsys.readouterr()
    code = main(["generate", "--checkpoint", result["checkpoint"], "--audio", str(wav), "--max-new-tokens", "3",
                 "--prompt", question])
    assert code == 0
    printed = capsys.readouterr().out

    # the same answer through the Python API: the command decodes the file and adds the <audio> placeholder
    import numpy as np
    import soundfile as sf
    import torch

    from modeling.model import EurekaAudioForCausalLM
    from modeling.processor import EurekaAudioProcessor

    model = EurekaAudioForCausalLM.from_pretrained(result["checkpoint"]).eval()
    processor = EurekaAudioProcessor.from_pretrained(result["checkpoint"])
    clip, _ = sf.read(str(wav), dtype="float32")
    batch = processor([[{"role": "user", "content": "<audio>" + question}]], [np.asarray(clip)])
    with torch.no_grad():
        expected = processor.decode(model.generate(**batch, max_new_tokens=3)[0])
    assert printed == expected + "\n"
    with pytest.raises(FileNotFoundError, match="no such file"):
        main(["generate", "--checkpoint", result["checkpoint"], "--audio", str(tmp_path / "missing.wav"),
              "--prompt", "x"])
