"""Training-mode dropout's generator and mask: Philox-4x32-10 against Random123's known
answers, the mask's statistics, exact p = 0 and p = 1, and keys, steps and streams that differ.
(The same mask on the native and ONNX targets: tests/_cases.py's dropout_keyed cases.)"""

from __future__ import annotations

import numpy as np
import pytest
from _optest import T, raises, rand, run
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.compiler.ops.random import keep_mask
from kiln.compiler.philox import philox4x32

KEY = np.array([2026, 3], np.int64)


@pytest.mark.parametrize("counter, key, expected", [
    # Random123 1.14, examples/kat_vectors: philox4x32 10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32(counter, key)) == expected


def test_philox_is_elementwise_over_counter_arrays():
    counters = np.arange(6, dtype=np.uint64)
    words = philox4x32((counters, 1, 2, 3), (4, 5))
    for i in range(6):
        assert [int(w[i]) for w in words] == [int(w) for w in philox4x32((i, 1, 2, 3), (4, 5))]


@settings(max_examples=15, deadline=None)
@given(p=st.sampled_from([0.1, 0.3, 0.5, 0.8]), seed=st.integers(0, 2**40),
       step=st.integers(0, 10**6))
def test_dropout_keeps_one_minus_p_and_scales_by_its_inverse(p, seed, step):
    x = np.ones((200, 100), np.float32)
    y = run("dropout_keyed", x, np.array([seed, step], np.int64), p=p, stream=1)
    kept = y != 0
    # 20000 Bernoulli(1 - p) draws: the fraction is within 5 standard deviations
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / x.size)
    np.testing.assert_allclose(y[kept], np.float32(1 / (1 - p)), rtol=1e-6)
    assert y.mean() == pytest.approx(1.0, abs=5 * np.sqrt(p / (1 - p) / x.size))


def test_dropout_p0_is_x_and_p1_is_zero_as_pytorch():
    x = rand(4, 9)
    x[0, :3] = [np.inf, -np.inf, np.nan]
    same = run("dropout_keyed", x, KEY, p=0.0)
    np.testing.assert_array_equal(same, x)
    zero = run("dropout_keyed", x, KEY, p=1.0)
    np.testing.assert_array_equal(zero[1:], 0)
    assert np.isnan(zero[0, :3]).all()  # x * 0: torch.nn.functional.dropout(inf, p=1) is nan


def test_masks_differ_by_key_step_and_stream_and_repeat_for_the_same():
    shape = (64, 64)
    base = keep_mask(shape, KEY, 0, 0.5)
    np.testing.assert_array_equal(keep_mask(shape, KEY.copy(), 0, 0.5), base)
    for other in (keep_mask(shape, np.array([2027, 3]), 0, 0.5),   # another seed
                  keep_mask(shape, np.array([2026, 4]), 0, 0.5),   # the next step
                  keep_mask(shape, np.array([2026, 3 + (1 << 32)]), 0, 0.5),  # step's high word
                  keep_mask(shape, np.array([2026 + (1 << 32), 3]), 0, 0.5),  # seed's high word
                  keep_mask(shape, KEY, 1, 0.5)):                  # another dropout of the model
        agree = (other == base).mean()
        assert 0.4 < agree < 0.6  # independent masks agree on about half the elements


def test_dropout_mask_of_an_element_does_not_depend_on_the_shape():
    """The counter is the row-major index: a batch's first rows draw as the batch alone."""
    small = keep_mask((3, 10), KEY, 5, 0.4)
    large = keep_mask((8, 10), KEY, 5, 0.4)
    np.testing.assert_array_equal(large[:3], small)


def test_dropout_keyed_checks_its_key_and_attributes():
    x, key = T([2, 3]), T([2], "i64")
    raises("K0302", "dropout_keyed", x, T([2], "i32"), arg="key")
    raises("K0301", "dropout_keyed", x, T([3], "i64"))
    raises("K0303", "dropout_keyed", x, key, p=1.5, arg="p")
    raises("K0303", "dropout_keyed", x, key, stream=-1, arg="stream")
    raises("K0302", "dropout_keyed", T([2, 3], "i64"), key, arg="x")


def test_dropout_with_training_true_outside_the_elaborator_is_refused():
    raises("K0303", "dropout", T([2, 3]), p=0.5, training=True, arg="training")


@pytest.mark.parametrize("op, args", [("dropout", [T([2, 3])]),
                                      ("batch_norm", [T([2, 3]), T([3]), T([3])])])
def test_training_must_be_a_bool(op, args):
    raises("K0303", op, *args, training=1, arg="training", match="true or false")
