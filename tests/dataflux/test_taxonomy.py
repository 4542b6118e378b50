"""The taxonomy file loads, validates, and selects leaves the way source configs name them."""

from __future__ import annotations

import copy

import pytest
import yaml

from dataflux.taxonomy import (
    TaxonomyError,
    default_taxonomy_path,
    load_taxonomy,
    nearest_values,
    taxonomy_from_dict,
    taxonomy_sha256,
)


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(default_taxonomy_path().read_text())


def write(tmp_path, doc) -> str:
    p = tmp_path / "tax.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def test_packaged_taxonomy_loads_every_leaf_with_a_four_level_path():
    tax = load_taxonomy()
    assert "tone_pitch" in tax.ids and "sound_source" in tax.ids
    for cat in tax:
        assert len(cat.path) == 4 and cat.path[3] == cat.id
        assert cat.question_templates and cat.judge_rules
    assert tax.leaf("tone_pitch").values == ["110 Hz", "220 Hz", "440 Hz", "880 Hz"]
    assert tax.leaf("tone_pitch").measured_by == "tone_pitch"
    assert tax.label_driven() == ["sound_source", "spoken_text", "spoken_language", "music_genre", "music_instrument", "emotion"]
    assert tax.values_from["sound_source"] == "labels" and tax.leaf("sound_source").values == []
    assert tax.values_from["spoken_text"] == "metadata" and tax.leaf("spoken_text").claimed_from == "transcript"
    assert tax.sha256 == taxonomy_sha256()


def test_leaves_for_accepts_branches_paths_and_leaf_ids():
    tax = load_taxonomy()
    assert [c.id for c in tax.leaves_for(["Sound/Tonal"])] == ["tone_pitch", "waveform"]
    assert [c.id for c in tax.leaves_for(["Sound > Tonal > Pitch"])] == ["tone_pitch"]
    assert [c.id for c in tax.leaves_for(["Music", "duration", "click_tempo"])] == [
        "click_tempo", "duration", "music_genre", "music_instrument"]
    assert len(tax.leaves_for(None)) == len(tax)
    with pytest.raises(TaxonomyError, match="'Sound/Nope' matches no leaf"):
        tax.leaves_for(["Sound/Nope"])


def test_siblings_and_nearest_values_order_distractors_by_closeness():
    tax = load_taxonomy()
    assert [c.id for c in tax.siblings("beep_count")] == ["sound_source"]  # same Sound > Events parent
    assert tax.sibling_values("tone_pitch", "880 Hz") == ["440 Hz", "220 Hz", "110 Hz"]
    assert nearest_values(["a", "b", "c", "d", "e", "f"], "c") == ["b", "d", "a"]


def test_label_vocabulary_is_bound_at_run_time_and_needs_four_labels():
    tax = load_taxonomy()
    bound = tax.bind_labels({"sound_source": ["rain", "dog", "car horn", "dog", "church bells"]})
    assert bound.leaf("sound_source").values == ["car horn", "church bells", "dog", "rain"]
    assert tax.leaf("sound_source").values == []  # the original is unchanged
    too_few = tax.bind_labels({"sound_source": ["dog", "rain"]})
    assert too_few.leaf("sound_source").values == []
    cats = tax.with_vocabulary(tax.leaves_for(["Sound/Events"]), {"sound_source": ["a", "b", "c", "d"]})
    assert [c.values for c in cats if c.id == "sound_source"] == [["a", "b", "c", "d"]]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["leaves"][0].update(colour="red"), r"leaf 'tone_pitch' \(leaves\[0\]\): unknown keys \['colour'\]"),
        (lambda d: d["leaves"][1].pop("judge_rules"), r"leaf 'waveform' \(leaves\[1\]\): missing fields \['judge_rules'\]"),
        (lambda d: d["leaves"][2].update(values=["1 beep", "2 beeps", "3 beeps"]), r"leaf 'beep_count'.*has 3 values"),
        (lambda d: d["leaves"].append(copy.deepcopy(d["leaves"][0])), r"leaf 'tone_pitch'.*duplicate id"),
        (lambda d: d["leaves"][0].update(values_from="labels"), r"give one of them"),
        (lambda d: d["leaves"][0]["path"].__setitem__(3, "pitch"), r"path's last level"),
        (lambda d: d.update(extra=1), r"unknown top-level keys \['extra'\]"),
    ],
)
def test_invalid_taxonomy_errors_name_the_file_and_leaf(tmp_path, doc, mutate, message):
    bad = copy.deepcopy(doc)
    mutate(bad)
    path = write(tmp_path, bad)
    with pytest.raises(TaxonomyError, match=message) as err:
        load_taxonomy(path)
    assert path in str(err.value)


def test_user_taxonomy_file_with_a_new_leaf_loads(tmp_path, doc):
    d = copy.deepcopy(doc)
    d["leaves"].append({
        "id": "room_size", "path": ["Sound", "Space", "Room", "room_size"], "description": "Reverb size.",
        "values": ["small", "medium", "large", "huge"], "measured_by": None, "needs": [],
        "question_templates": ["How large does the room sound?"], "judge_rules": ["Judge the reverb tail."],
    })
    tax = load_taxonomy(write(tmp_path, d))
    assert tax.leaf("room_size").values[-1] == "huge"
    assert taxonomy_from_dict(d).ids == tax.ids


def test_transcript_distractors_differ_from_the_answer_and_each_other_in_a_third_of_their_words():
    from dataflux.taxonomy import distinct_neighbours, length_order

    phrases = sorted(["You are now muted.", "You are now unmuted.", "...to leave the conference", "To leave the conference.",
                      "Please hold.", "Goodbye.", "Thank you for calling.", "Your call is important."], key=length_order)
    got = distinct_neighbours(phrases, "You are now unmuted.", 3)
    assert "You are now muted." not in got and len(got) == 3
    assert not {"...to leave the conference", "To leave the conference."} <= set(got)


def test_a_metadata_leaf_with_fixed_values_offers_the_sources_values_first_then_the_fixed_ones():
    tax = load_taxonomy()
    fixed = tax.leaf("spoken_language").values
    bound = tax.bind_labels({"spoken_language": ["Czech", "Dutch"]}).leaf("spoken_language")
    assert bound.values[:2] == ["Czech", "Dutch"]  # a language outside the fixed list gets its question
    assert bound.values[2:] == [v for v in fixed if v != "Dutch"]
    assert tax.bind_labels({"spoken_text": ["a", "b"]}).leaf("spoken_text").values == []  # too few: not asked
