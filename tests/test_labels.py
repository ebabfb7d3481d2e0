"""Label- and example-based negative sampling (nvdata.mine.labels): small arrays, exact checks."""

from __future__ import annotations

import numpy as np
import pytest

from nvdata.errors import NvdataError
from nvdata.mine import labels as lab


def _sets(rows):
    return lab.build_label_sets(rows)


def _own(sets, i):
    return set(sets.values[sets.offsets[i]:sets.offsets[i + 1]].tolist())


def test_rng_depends_on_seed_and_source_only():
    a = lab.rng_for(7, "emotion").random(5)
    assert np.array_equal(a, lab.rng_for(7, "emotion").random(5))
    assert not np.array_equal(a, lab.rng_for(8, "emotion").random(5))
    assert not np.array_equal(a, lab.rng_for(7, "imdb").random(5))
    with pytest.raises(NvdataError, match="seed"):
        lab.rng_for(-1, "emotion")


def test_label_sets_sorted_vocabulary_and_dedup_within_row():
    sets = _sets([["b", "a", "b"], ["c"], []])
    assert sets.names == ("a", "b", "c")
    assert sets.offsets.tolist() == [0, 2, 3, 3]
    assert sets.values.tolist() == [1, 0, 2]  # first-seen order within the row, duplicate dropped
    assert sets.row_of_values().tolist() == [0, 0, 1]
    # Same labels in another row order give the same vocabulary (draws do not depend on order).
    assert _sets([["c"], [], ["b", "a"]]).names == sets.names


def test_label_bits_overlap():
    names = [f"l{i:03d}" for i in range(130)]  # spans three 64-bit words
    sets = _sets([[names[0], names[129]], [names[129]], [names[64]], [], names])
    bits = lab.label_bits(sets)
    assert bits.shape == (5, 3)
    a, b = np.array([0, 0, 1, 3, 2]), np.array([1, 2, 2, 0, 4])
    assert lab.share_a_label(bits, a, b).tolist() == [True, False, False, False, True]


def test_other_labels_never_own_distinct_and_padded():
    rows = [["a"], ["b"], ["c"], ["a", "b"], ["a", "b", "c"]]
    sets = _sets(rows)
    out = lab.sample_other_labels(sets, 2, lab.rng_for(1, "x"))
    assert out.shape == (5, 2)
    for i in range(5):
        got = [v for v in out[i] if v >= 0]
        assert len(got) == len(set(got))
        assert not set(got) & _own(sets, i)
        assert len(got) == min(2, 3 - len(_own(sets, i)))
    assert out[4].tolist() == [-1, -1]  # a row with every label has no negative


def test_other_labels_single_label_dataset_gives_none():
    sets = _sets([["only"]] * 4)
    assert (lab.sample_other_labels(sets, 3, lab.rng_for(0, "x")) == -1).all()


def test_other_labels_chunking_does_not_change_validity():
    rng = np.random.default_rng(0)
    rows = [[f"c{j}" for j in rng.choice(10, size=rng.integers(1, 4), replace=False)] for _ in range(300)]
    sets = _sets(rows)
    out = lab.sample_other_labels(sets, 3, lab.rng_for(3, "x"), chunk_rows=7)
    for i in range(300):
        assert not {int(v) for v in out[i] if v >= 0} & _own(sets, i)
        assert (out[i] >= 0).all()


def test_other_labels_roughly_uniform():
    sets = _sets([["a"]] * 6000 + [["b"], ["c"], ["d"]])
    out = lab.sample_other_labels(sets, 1, lab.rng_for(5, "x"))[:6000, 0]
    counts = np.bincount(out, minlength=4)
    assert counts[0] == 0
    assert all(1800 < c < 2200 for c in counts[1:])  # 2000 expected each


def test_sample_member_is_own_label():
    sets = _sets([["a", "b"], ["c"], []])
    got = lab.sample_member(sets, lab.rng_for(2, "x"))
    assert got[0] in _own(sets, 0) and got[1] == 2 and got[2] == -1


def test_example_of_excludes_self_and_singletons():
    sets = _sets([["a"], ["a"], ["b"], ["a"]])
    pools = lab.class_pools(sets)
    assert pools.offsets.tolist() == [0, 3, 4] and pools.rows.tolist() == [0, 1, 3, 2]
    own = lab.sample_member(sets, lab.rng_for(0, "x"))
    for seed in range(20):
        got = lab.sample_example_of(own, pools, lab.rng_for(seed, "x"), exclude=np.arange(4))
        assert got[2] == -1  # 'b' has one example: the row itself
        for i in (0, 1, 3):
            assert got[i] != i and got[i] in (0, 1, 3)
    assert lab.sample_example_of(np.array([-1]), pools, lab.rng_for(0, "x")).tolist() == [-1]


def test_example_of_reaches_every_other_member():
    sets = _sets([["a"]] * 5)
    pools = lab.class_pools(sets)
    seen = set()
    rng = lab.rng_for(9, "x")
    for _ in range(200):
        seen.add(int(lab.sample_example_of(np.array([0]), pools, rng, exclude=np.array([2]))[0]))
    assert seen == {0, 1, 3, 4}


def test_example_negatives_share_no_label_with_the_row():
    rows = [["x", "y"], ["x"], ["y"], ["z"], ["z", "x"], ["w"], ["w", "y"]]
    sets = _sets(rows)
    pools = lab.class_pools(sets)
    for seed in range(10):
        out = lab.sample_example_negatives(sets, pools, 2, lab.rng_for(seed, "x"))
        for i, row in enumerate(out):
            for j in row:
                if j >= 0:
                    assert not _own(sets, i) & _own(sets, int(j)), (i, j)


def test_compact_negatives_removes_gaps():
    assert lab.compact_negatives(np.array([[3, -1, 1], [-1, -1, -1]])) == [[3, 1], []]


def test_k_must_be_positive():
    with pytest.raises(NvdataError):
        lab.sample_other_labels(_sets([["a"], ["b"]]), 0, lab.rng_for(0, "x"))
