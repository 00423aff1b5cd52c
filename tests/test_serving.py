"""How the pyfunc combines an ensemble's members, against values worked out by hand."""

import numpy as np
import pytest

from kana.serving import combine_probabilities


def test_one_model_is_left_as_it_is():
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert combine_probabilities([p]) is p


def test_ensemble_is_the_renormalised_geometric_mean():
    a = np.array([[0.5, 0.5], [0.9, 0.1]])
    b = np.array([[0.9, 0.1], [0.9, 0.1]])
    # row 0: sqrt(.45) : sqrt(.05) = 3 : 1 -> 0.75, 0.25; row 1: both agree -> unchanged
    np.testing.assert_allclose(combine_probabilities([a, b]), [[0.75, 0.25], [0.9, 0.1]])


def test_a_class_one_member_rules_out_stays_unlikely():
    confident_wrong = np.array([[0.98, 0.01, 0.01]])
    others = np.array([[0.001, 0.6, 0.399]])
    combined = combine_probabilities([confident_wrong, others, others])
    assert combined.argmax() == 1 and combined.sum() == pytest.approx(1.0)


def test_zero_probabilities_do_not_produce_nan():
    a = np.array([[1.0, 0.0]])
    b = np.array([[0.0, 1.0]])
    out = combine_probabilities([a, b])
    assert np.isfinite(out).all() and out.sum() == pytest.approx(1.0)
