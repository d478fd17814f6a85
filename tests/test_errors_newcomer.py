"""Mistakes made while writing examples/seq2seq_attention.kiln and examples/graphsage.kiln from
the docs alone (issue 13): each message says what to write instead."""

from __future__ import annotations

import textwrap

import pytest

import kiln
from kiln import KilnError


def error_of(src: str) -> KilnError:
    with pytest.raises(KilnError) as info:
        kiln.load(textwrap.dedent(src)).elaborate()
    return info.value


def test_a_bare_tuple_after_equals_asks_for_parentheses():
    err = error_of("""
    model M {
      forward(e: i64[2, E]) -> i64[E] {
        src, dst = e[0], e[1]
        return src + dst
      }
    }""")
    assert err.code == "K0001" and err.message.startswith("unexpected ','")
    assert (err.span.line, err.span.col) == (4, 20)
    assert "src, dst = (e[0], e[1])" in err.hint


def test_a_comma_that_is_not_after_an_assignment_gets_no_tuple_hint():
    err = error_of("""
    model M {
      forward(x: f32[B]) -> f32[B] {
        return x +, 1
      }
    }""")
    assert err.code == "K0001" and err.hint is None


def test_a_scan_header_broken_before_carry_says_how_to_continue_it():
    err = error_of("""
    model M {
      forward(xs: f32[T, B, 2]) -> f32[B, 2] {
        s = scan x in xs
            carry (acc = zeros([B, 2])) {
          acc = acc + x
        }
        return s
      }
    }""")
    assert err.code == "K0001" and "end of line" in err.message
    assert err.span.line == 4
    assert "\\" in err.hint and "scan" in err.hint


def test_unpacking_a_scan_counts_its_emits_and_carries():
    err = error_of("""
    model M {
      forward(xs: f32[T, B, 2]) -> f32[T, B, 2] {
        ys, total, extra = scan x in xs carry (acc = zeros([B, 2])) {
          acc = acc + x
          emit acc
        }
        return ys
      }
    }""")
    assert err.code == "K0201"
    assert err.message == "cannot unpack a tuple of 2 into 3 names (ys, total, extra)"
    assert err.hint == "a scan gives its emitted values (1 here), then each carry's final value (acc)"


def test_unpacking_a_tensor_says_it_is_one_value():
    err = error_of("""
    model M {
      forward(x: f32[B, 2]) -> f32[B] {
        a, b = x
        return a
      }
    }""")
    assert err.code == "K0201"
    assert err.message == "cannot unpack a tensor f32[B, 2] into 2 names (a, b): it is one value"


def test_a_carry_whose_shape_changes_points_at_the_assignment_in_the_body():
    err = error_of("""
    model M {
      forward(xs: f32[T, B, 2]) -> f32[B, 2] {
        acc = scan x in xs carry (acc = zeros([B, 2])) {
          if true {
            acc = (acc + x)[:, none]
          }
        }
        return acc
      }
    }""")
    assert err.code == "K0301"
    assert err.message == "scan carry acc starts as f32[B, 2] but the body makes it f32[B, 1, 2]"
    assert (err.span.line, err.span.col) == (6, 9)
