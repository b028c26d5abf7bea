"""The semantic labeller against 100 hand-labelled features of the example (tests/data/semantic_sample.json).

The sample: 100 features of the example atlas drawn uniformly with a fixed seed
(examples/smollm2/semantic_sample.py), each with its four token lists as the
build stored them (5 tokens each), each list's embedding coherence, and a hand
label with a one-line reason (the rule is in the file). Measured when the
labeller moved to wordfreq's word list and all four lists: agreement 95 of
100 (Cohen's kappa 0.59; 4 of the 7 hand-labelled semantic features found, 2
false alarms), against 63 of 100 for the heuristic before (kappa -0.02; 2 of 7 found, 32
false alarms). Labelling every feature non-semantic would agree on 93.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders.passes.semantic import SemanticSettings, is_word, label_feature

SAMPLE = Path(__file__).parent / "data" / "semantic_sample.json"
MEASURED = 95  # agreements of 100 when the labeller was measured
MARGIN = 2


@pytest.fixture(scope="module")
def sample():
    return json.loads(SAMPLE.read_text(encoding="utf-8"))["features"]


def _labels(sample):
    s = SemanticSettings()
    return [label_feature({k: f[k] for k in ("du+", "du-", "ee+", "ee-")}, f["embed_z"], s) for f in sample]


def test_sample_is_what_it_says(sample):
    assert len(sample) == 100 and len({f["feature"] for f in sample}) == 100
    for f in sample:
        assert f["label"] in ("semantic", "non_semantic") and f["reason"].strip()
        assert all(len(f[k]) == 5 for k in ("du+", "du-", "ee+", "ee-"))


def test_labeller_agrees_with_the_hand_labels(sample):
    got = [kind for _, kind, _, _ in _labels(sample)]
    hand = [f["label"] for f in sample]
    agree = sum(g == h for g, h in zip(got, hand, strict=True))
    assert agree >= MEASURED - MARGIN, agree
    # and not by calling everything non-semantic (that agrees on 93): it finds most hand-labelled semantic ones
    found = sum(g == h == "semantic" for g, h in zip(got, hand, strict=True))
    false_alarms = sum(g == "semantic" != h for g, h in zip(got, hand, strict=True))
    assert found >= 4 and false_alarms <= 3, (found, false_alarms)


def test_the_old_heuristic_agreed_far_less(sample):
    """The heuristic before (recorded in the sample): the figure the new one is measured against."""
    before = sum(f["heuristic_before"] == f["label"] for f in sample)
    assert before == 63


@pytest.mark.parametrize(
    "tok, word",
    [(" enthus", False), (" opin", False), (" strugg", False), (" setattr", False), ("ChannelType", False),
     ("MER", False), (" enthusiasm", True), (" opinion", True), ("Years", True), (" years", True),
     ("years", False), (" 1990", False)],
)  # fmt: skip
def test_fragments_after_a_space_are_not_words(tok, word):
    assert is_word(tok) is word
