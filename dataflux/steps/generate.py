"""Question generation: multiple-choice questions about one taxonomy leaf of one captioned clip.

`TemplateQuestionWriter` fills the leaf's question templates. The correct option is the value
the caption states; the three distractors are the values nearest to it in the leaf's
vocabulary (for "440 Hz": 220 Hz, 880 Hz, 110 Hz), so they are plausible; the correct option
lands at a position drawn from the seed the loop derives from the clip, leaf and round.
"""

from __future__ import annotations

import random
import re

from dataflux.records import Clip
from dataflux.steps.base import Call, Caption, Category, Generation, Question
from dataflux.claims import caption_claims
from dataflux.steps.hard_negatives import has_similarity, similar_labels
from dataflux.taxonomy import distinct_neighbours, nearest_values

WRITER_MODEL = "reference-writer@1"
N_CHOICES = 4


def measured_feedback(leaf: str, value: str) -> str:
    """The sentence a judge's feedback uses to name a measured value; `feedback_measurement` reads it."""
    return f'measured {leaf} = "{value}"'


def feedback_measurement(feedback: str | None, leaf: str) -> str | None:
    """The measured value of `leaf` named in judge feedback (`measured <leaf> = "<value>"`), if any."""
    if not feedback:
        return None
    m = re.search(r"measured " + re.escape(leaf) + r' = "([^"]+)"', feedback)
    return m.group(1) if m else None


def mentions(text: str, value: str) -> bool:
    """Whether `value` appears in `text` as whole words (case-insensitive)."""
    return re.search(r"(?<![\w-])" + re.escape(value) + r"(?![\w-])", text, flags=re.IGNORECASE) is not None


def distractors_for(category: Category, value: str) -> list[str]:
    """The 3 wrong options: the nearest values of the vocabulary; for a transcript, the nearest
    phrases that differ from it in at least a third of their words (dataflux.taxonomy); for a
    class label, the labels most like it (dataflux.steps.hard_negatives)."""
    if category.claimed_from == "transcript":
        return distinct_neighbours(category.values, value, N_CHOICES - 1)
    if has_similarity(category.id):  # class labels: the most confusable ones (dataflux/label_similarity.yaml)
        return similar_labels(category.id, category.values, value, N_CHOICES - 1)
    return nearest_values(category.values, value, N_CHOICES - 1)


class TemplateQuestionWriter:
    """Writes up to `n` questions per leaf from the taxonomy's question templates.

    `is_success` is True when the caption states a value of the leaf's vocabulary. With
    feedback, a measured value named in it replaces the caption's claim as the answer key, and
    the templates are taken in a different order so the rewrite is not the same text.
    """

    backend = "reference"
    model = WRITER_MODEL

    async def generate(
        self, clip: Clip, caption: Caption, category: Category, n: int, seed: int,
        feedback: str | None = None,
    ) -> Generation:
        call = Call(step="generate", backend=self.backend, model=self.model,
                    params={"n": n, "with_feedback": feedback is not None}, seed=seed)
        leaf = category.id
        value = caption_claims(caption, [category]).get(leaf)
        from_feedback = feedback_measurement(feedback, leaf)
        if from_feedback is not None and from_feedback in category.values:
            value = from_feedback
        if len(category.values) < N_CHOICES:
            return Generation(False, [], call, reason=f"{leaf}: vocabulary has {len(category.values)} values; "
                                                       f"{N_CHOICES} are needed for a question")
        if value is None:
            return Generation(False, [], call, reason=f"the caption states no value for {leaf}")
        if value not in category.values:
            return Generation(False, [], call, reason=f"the caption's {leaf} value {value!r} is not in the "
                                                       f"vocabulary {category.values}")
        rng = random.Random(seed)
        distractors = distractors_for(category, value)
        templates = [t for t in category.question_templates
                     if not any(mentions(t, v) for v in [value, *distractors])]
        if feedback is not None and len(templates) > 1:
            shift = rng.randrange(1, len(templates))
            templates = templates[shift:] + templates[:shift]
        questions = []
        for template in templates[: max(0, n)]:
            others = list(distractors)
            rng.shuffle(others)
            pos = rng.randrange(N_CHOICES)
            choices = others[:pos] + [value] + others[pos:]
            questions.append(Question(question=template, choices=choices, answer_index=pos))
        if not questions:
            return Generation(False, [], call, reason=f"{leaf}: no question template avoids naming the options")
        reason = f"the caption states {leaf} = {value!r}"
        if from_feedback is not None:
            reason += f"; rewritten with the judge's feedback ({measured_feedback(leaf, from_feedback)})"
        return Generation(True, questions, call, reason=reason)
