"""The population of simulated language participants: registered by name, the default subject one of them, each
differing from the group as calibrated, in shape and in features."""

import numpy as np
import pytest

from simulation.population import AGREEMENT, MEMBERS, PopulationMember
from simulation.subjects import SUBJECTS, load_subject, subject_rois

SENTENCES = [
    "The committee postponed its decision until the next meeting.",
    "She walked to the station in the rain.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "He laughed.",
    "The old lighthouse keeper wrote letters to sailors he had never met.",
    "Quarterly revenue exceeded the analysts' most optimistic forecasts.",
]


def test_every_member_is_a_registered_subject_and_p01_is_the_default():
    names = [f"population:{m}" for m in MEMBERS]
    assert len(MEMBERS) >= 8 and set(names) <= set(SUBJECTS.names())
    assert all(subject_rois(n) == ["lang", "md"] for n in names)  # (without loading a model)
    default = load_subject("language")(SENTENCES)
    np.testing.assert_allclose(load_subject("population:p01")(SENTENCES), default, rtol=1e-6)
    other = load_subject("population:p06")(SENTENCES)
    assert other.shape == default.shape and not np.allclose(other[:, 0], default[:, 0])
    with pytest.raises(ValueError, match="no population member 'p99'"):
        PopulationMember("p99")


def test_members_differ_in_shape_basis_and_weights_as_documented():
    """Shapes: a top-saturating member's gain above its mean is the larger, a bottom one's below, a symmetric one's
    equal; bases: MiniLM layers 3 and 6; individual weights agree with their basis's group weights at AGREEMENT
    (on the weights' own scale, as the refit made them: checked here through the members' linear parts)."""
    kinds = {(m.layer, m.shape) for m in MEMBERS.values()}
    assert {m.layer for m in MEMBERS.values()} == {3, 6} and {s for _, s in kinds} == {"top", "bottom", "symmetric"}
    for name, m in MEMBERS.items():
        p = PopulationMember(name)
        assert p.layer == m.layer
        if m.shape == "top":
            assert p.gain_up > 2 * p.gain_down
        elif m.shape == "bottom":
            assert p.gain_down > 2 * p.gain_up
        else:
            assert p.gain_up == pytest.approx(p.gain_down)
    from simulation.language import subject_features
    from stimulus_synthesis import wordnet_sentences

    sentences = list(wordnet_sentences("examples"))[:300]  # (sentences the refit never saw)
    X = subject_features(sentences, 3)
    group, member = PopulationMember("p01"), PopulationMember("p02")  # (the same basis)
    r = np.corrcoef(X @ group.coef, X @ member.coef)[0, 1]
    assert abs(r - AGREEMENT) < 0.2 and AGREEMENT == pytest.approx(0.2 / 0.289, abs=0.01)
