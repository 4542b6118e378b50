"""Class labels held against the audio: a label the rest of the corpus contradicts is caught.

Labels (sound source, instrument, genre, emotion) come from a source's metadata. To check one
without a model of that label, the corpus checks itself: every clip has an audio embedding (the
Whisper encoder's pooled states, `WhisperRecognizer.pooled_states`, or an embedding endpoint's
vectors); a logistic regression is trained on the other folds and predicts each clip's class
(`cross_val_predict`, so no clip is judged by a classifier that saw its own label); confident
learning (cleanlab's `find_label_issues`, per-class thresholds on those out-of-fold
probabilities) names the labels that disagree with what the rest of the corpus says that class
sounds like.

A class with fewer than `min_clips` clips is not judged: its clips stay `metadata-only` with the
reason, since a handful of clips cannot say what the class sounds like.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from dataflux.fields import LABEL_LEAVES

MIN_CLIPS = 5


@dataclass
class LabelVerdict:
    status: str  # "measured" or "metadata-only"
    label_ok: bool | None  # None where not measured
    predicted: str | None  # the class the rest of the corpus hears; None where not measured
    reason: str = ""


def out_of_fold_probabilities(embeddings: np.ndarray, labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """[N, C] class probabilities of each clip from a classifier that never saw it (C: sorted classes)."""
    # lazy: scikit-learn stays out of start-up until a source's labels are judged
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, embeddings, labels, cv=split, method="predict_proba")


def check_labels(embeddings: np.ndarray, labels: list[str], *, min_clips: int = MIN_CLIPS,
                 seed: int = 0) -> list[LabelVerdict]:
    """One verdict per clip: its label is kept or contradicted by the corpus, or not judged."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings {embeddings.shape} and {len(labels)} labels: need one [N, D] row per label")
    counts = Counter(labels)
    judged = [i for i, lab in enumerate(labels) if counts[lab] >= min_clips]
    verdicts = [LabelVerdict("metadata-only", None, None,
                             f"class {lab!r} has {counts[lab]} clips (fewer than {min_clips}: too rare to judge)")
                for lab in labels]
    classes = sorted({labels[i] for i in judged})
    if len(classes) < 2:
        for i in judged:
            verdicts[i] = LabelVerdict("metadata-only", None, None,
                                       "only one class has enough clips: nothing to tell it apart from")
        return verdicts
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[labels[i]] for i in judged])
    probs = out_of_fold_probabilities(embeddings[judged], y, folds=min(min_clips, min(Counter(y).values())), seed=seed)
    from cleanlab.filter import find_label_issues  # lazy: as scikit-learn above

    issues = find_label_issues(labels=y, pred_probs=probs)
    for row, i in enumerate(judged):
        verdicts[i] = LabelVerdict("measured", not bool(issues[row]), classes[int(np.argmax(probs[row]))])
    return verdicts


OTHER_CLASS = "(a class other than the claimed label)"


def judged_fields(labels: list[dict], min_clips: int = MIN_CLIPS) -> list[str]:
    """The label fields with at least two classes of `min_clips` clips: the ones worth embedding for."""
    out = []
    for field in LABEL_LEAVES:
        counts = Counter(str(lab[field]).strip() for lab in labels if lab.get(field) not in (None, ""))
        if sum(1 for n in counts.values() if n >= min_clips) >= 2:
            out.append(field)
    return out


def verdicts_by_field(embeddings: np.ndarray, labels: list[dict], fields: list[str],
                      seed: int = 0) -> list[dict[str, LabelVerdict]]:
    """For each clip, leaf -> its label's verdict, for every field in `fields` the clip carries."""
    out: list[dict[str, LabelVerdict]] = [{} for _ in labels]
    for field in fields:
        rows = [i for i, lab in enumerate(labels) if lab.get(field) not in (None, "")]
        found = check_labels(embeddings[rows], [str(labels[i][field]).strip() for i in rows], seed=seed)
        for i, verdict in zip(rows, found):
            out[i][LABEL_LEAVES[field]] = verdict
    return out


def label_fact(claimed: str, verdict: LabelVerdict) -> str | None:
    """The leaf's measured value: the claim where the corpus agrees, the class it hears instead (or
    OTHER_CLASS) where it does not, None where the class was not judged (metadata-only)."""
    if verdict.status != "measured":
        return None
    if verdict.label_ok:
        return claimed
    return verdict.predicted if verdict.predicted not in (None, claimed) else OTHER_CLASS
