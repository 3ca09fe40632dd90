"""Number tokenizers: round trips, allowed tables, invalid input, describe/build, expert targets."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlreg.errors import ConfigError, DataError, InvalidNumber
from rlreg.numbers import (
    IEEEStyle,
    NormalizedDigits,
    NumbersConfig,
    NumberTokenizer,
    P10,
    build_number_tokenizer,
    number_tokenizer_names,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKENIZERS: list[NumberTokenizer] = (
    [NormalizedDigits(b, L) for b, L in [(2, 1), (2, 8), (3, 5), (4, 6), (6, 4), (8, 8), (10, 4), (10, 16), (2, 16)]]
    + [IEEEStyle(E, M) for E, M in [(1, 1), (1, 3), (2, 4), (2, 7), (2, 15)]]
    + [P10(M, lo, hi) for M, lo, hi in [(1, -3, 3), (4, -10, 10), (6, -300, 294), (15, -5, 5), (3, 2, 2)]]
)
IDS = [repr(t) for t in TOKENIZERS]


def in_range(tok: NumberTokenizer) -> st.SearchStrategy[float]:
    """Floats spread over the whole range: uniform draws miss tiny magnitudes, so mix in log-spread ones."""
    plain = st.floats(tok.low, tok.high, allow_nan=False, allow_infinity=False)
    if tok.low >= 0:
        return plain
    top = math.log10(tok.high)
    log_spread = st.builds(
        lambda s, e, f: min(max(s * 10.0**e * f, tok.low), tok.high),
        st.sampled_from([-1.0, 1.0]),
        st.integers(-330, int(top)),
        st.floats(1.0, 9.999),
    )
    return st.one_of(plain, log_spread, st.sampled_from([0.0, tok.low, tok.high, 1.0, -1.0]))


def allowed_sequences(tok: NumberTokenizer) -> st.SearchStrategy[list[int]]:
    return st.tuples(*[st.sampled_from(tok.allowed_ids(p)) for p in range(tok.length)]).map(list)


# ---------------------------------------------------------------- vocabulary and tables


@pytest.mark.parametrize("tok", TOKENIZERS, ids=IDS)
def test_vocabulary_and_table_shape(tok: NumberTokenizer) -> None:
    assert len(set(tok.tokens)) == len(tok.tokens)
    assert all(re.fullmatch(r"<[^<>\s]+>", t) for t in tok.tokens)
    assert tok.allowed.shape == (tok.length, len(tok.tokens)) and tok.allowed.dtype == bool
    assert tok.allowed.any(axis=1).all(), "every position needs some allowed token"
    assert tok.digit_values.shape == (len(tok.tokens),)
    for pos in tok.digit_positions:  # digit positions hold digit tokens only
        assert np.isfinite(tok.digit_values[tok.allowed[pos]]).all()
    for i, t in enumerate(tok.tokens):
        assert (t.startswith("<d") and tok.digit_values[i] == int(t[2:-1])) or np.isnan(tok.digit_values[i])


def test_token_formats() -> None:
    assert NormalizedDigits(4, 3).tokens == ["<d0>", "<d1>", "<d2>", "<d3>"]
    assert IEEEStyle(2, 4).tokens[:4] == ["<+>", "<->", "<E+>", "<E->"] and IEEEStyle(2, 4).length == 8
    p = P10(4, -2, 1)
    assert p.tokens[-4:] == ["<E-2>", "<E-1>", "<E0>", "<E1>"] and p.length == 6
    assert NormalizedDigits(2, 4).encode(0.6) == ["<d1>", "<d0>", "<d0>", "<d1>"]
    assert IEEEStyle(2, 4).encode(-0.01234) == ["<->", "<E->", "<d0>", "<d2>", "<d1>", "<d2>", "<d3>", "<d4>"]
    assert P10(4, -10, 10).encode(1234.0) == ["<+>", "<d1>", "<d2>", "<d3>", "<d4>", "<E0>"]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("tok", TOKENIZERS, ids=IDS)
def test_roundtrip_within_resolution(tok: NumberTokenizer) -> None:
    @FAST
    @given(in_range(tok))
    def check(y: float) -> None:
        ids = tok.encode_ids(y)
        assert len(ids) == tok.length
        assert all(tok.allowed[p, i] for p, i in enumerate(ids)), "encode must respect the allowed table"
        assert tok.encode(y) == [tok.tokens[i] for i in ids]
        got = tok.decode(tok.encode(y))
        assert got == tok.decode_ids(ids)
        assert abs(got - y) <= tok.resolution(y), (y, got, tok.resolution(y))

    check()


@pytest.mark.parametrize("tok", TOKENIZERS, ids=IDS)
def test_encoding_preserves_order(tok: NumberTokenizer) -> None:
    @FAST
    @given(in_range(tok), in_range(tok))
    def check(a: float, b: float) -> None:
        lo, hi = min(a, b), max(a, b)
        assert tok.decode_ids(tok.encode_ids(lo)) <= tok.decode_ids(tok.encode_ids(hi))

    check()


def test_exact_values() -> None:
    n = NormalizedDigits(2, 4)
    assert n.decode_ids([1, 0, 0, 1]) == pytest.approx(9.5 / 16)  # bin centre
    assert n.encode_ids(1.0) == [1, 1, 1, 1] and n.encode_ids(0.0) == [0, 0, 0, 0]
    assert n.resolution(0.3) == pytest.approx(1 / 32)
    ieee = IEEEStyle(2, 4)
    assert ieee.decode(ieee.encode(9.9996)) == 10.0  # mantissa carry
    assert ieee.decode(ieee.encode(0.0)) == 0.0 and ieee.decode(ieee.encode(-1e-120)) == 0.0
    assert ieee.decode(ieee.encode(1.0006e-99)) == pytest.approx(1.001e-99)
    assert ieee.high == pytest.approx(9.999e99) and ieee.low == -ieee.high
    p = P10(4, -10, 10)
    assert p.decode(p.encode(1234.5)) == 1234.0  # round half to even
    assert p.encode(3.7e-11)[1:] == ["<d0>"] * 4 + ["<E-10>"]  # below the smallest step: zero
    assert p.encode(1.5e-9)[1:] == ["<d0>", "<d0>", "<d1>", "<d5>", "<E-10>"]  # leading zeros
    assert p.decode(p.encode(-0.001)) == -0.001


@pytest.mark.parametrize(
    "tok, bad",
    [
        (NormalizedDigits(2, 8), [1.5, -0.01, math.nan, math.inf, "x"]),
        (IEEEStyle(2, 4), [1e100, -1e100, math.nan, -math.inf]),
        (P10(4, -10, 10), [1e15, -1e15, math.nan, None]),
    ],
)
def test_encode_rejects_unrepresentable(tok: NumberTokenizer, bad: list) -> None:
    for y in bad:
        with pytest.raises(DataError, match=tok.name):
            tok.encode(y)
        with pytest.raises(ValueError):
            tok.encode_ids(y)


# ---------------------------------------------------------------- allowed table => finite


@pytest.mark.parametrize("tok", TOKENIZERS, ids=IDS)
def test_every_allowed_sequence_decodes_finite(tok: NumberTokenizer) -> None:
    @FAST
    @given(allowed_sequences(tok))
    def check(ids: list[int]) -> None:
        y = tok.decode_ids(ids)
        assert math.isfinite(y) and tok.low <= y <= tok.high

    check()


@pytest.mark.parametrize("tok", [NormalizedDigits(3, 4), IEEEStyle(1, 2), P10(2, -2, 2)], ids=repr)
def test_allowed_table_exhaustively(tok: NumberTokenizer) -> None:
    seqs = np.array(list(itertools.product(*[tok.allowed_ids(p) for p in range(tok.length)])))
    values, valid = tok.decode_many(seqs)
    assert valid.all() and np.isfinite(values).all()
    assert values.min() >= tok.low and values.max() <= tok.high
    sample = seqs[:: max(1, len(seqs) // 50)]
    assert [tok.decode_ids(s) for s in sample] == values[:: max(1, len(seqs) // 50)].tolist()


# ---------------------------------------------------------------- invalid sequences


@pytest.mark.parametrize(
    "tok, seq, position",
    [
        (NormalizedDigits(2, 4), ["<d1>", "<d0>", "<d1>"], None),  # too short
        (NormalizedDigits(2, 4), ["<d1>", "<d2>", "<d0>", "<d0>"], 1),  # not in base 2
        (NormalizedDigits(2, 4), ["<d1>", "<d0>", "<+>", "<d0>"], 2),  # unknown token
        (IEEEStyle(1, 2), ["<+>", "<E+>", "<d1>", "<d0>", "<d5>"], 3),  # leading mantissa zero
        (IEEEStyle(1, 2), ["<E+>", "<+>", "<d1>", "<d1>", "<d5>"], 0),  # sign in the wrong place
        (IEEEStyle(1, 2), ["<+>", "<E+>", "<d1>", "<d1>", "<d5>", "<d5>"], None),  # too long
        (P10(2, -2, 2), ["<+>", "<d1>", "<E0>", "<E0>"], 2),  # exponent at a digit position
        (P10(2, -2, 2), ["<+>", "<d1>", "<d2>", "<d3>"], 3),  # digit at the exponent position
        (P10(2, -2, 2), ["<+>", "<d1>", "<d2>", "<E3>"], 3),  # exponent beyond the range
        (P10(2, -2, 2), ["<+>", "<d1>", None, "<E0>"], 2),
    ],
)
def test_invalid_sequences_raise_with_position(tok: NumberTokenizer, seq: list, position: int | None) -> None:
    with pytest.raises(InvalidNumber) as err:
        tok.decode(seq)
    assert err.value.position == position
    ids = [tok.token_to_id.get(t, len(tok.tokens)) if isinstance(t, str) else -1 for t in seq]
    values, valid = tok.decode_many([ids])
    assert not valid[0] and math.isnan(values[0])


@pytest.mark.parametrize("tok", [NormalizedDigits(2, 4), IEEEStyle(1, 2), P10(2, -2, 2)], ids=repr)
def test_decode_never_crashes(tok: NumberTokenizer) -> None:
    junk = st.one_of(st.integers(-3, len(tok.tokens) + 3), st.sampled_from(tok.tokens), st.none(), st.floats(), st.text(max_size=3))

    @FAST
    @given(st.lists(junk, min_size=0, max_size=tok.length + 2))
    def check(seq: list) -> None:
        for fn in (tok.decode, tok.decode_ids):
            try:
                assert math.isfinite(fn(seq))
            except InvalidNumber:
                pass
        values, valid = tok.decode_many([seq])
        assert valid[0] == math.isfinite(values[0])

    check()


def test_decode_rejects_non_sequences() -> None:
    tok = NormalizedDigits(2, 2)
    for bad in ("<d0><d1>", None, 3, {"a": 1}):
        with pytest.raises(InvalidNumber):
            tok.decode(bad)
        with pytest.raises(InvalidNumber):
            tok.decode_ids(bad)
    with pytest.raises(InvalidNumber, match="not an integer"):
        tok.decode_ids([0, 1.0])
    with pytest.raises(InvalidNumber, match="outside vocabulary"):
        tok.decode_ids([0, 2])


def test_decode_many_mixed_batch() -> None:
    tok = IEEEStyle(1, 2)
    good = [tok.encode_ids(y) for y in (-3.5, 0.0, 42.0)]
    batch = [good[0], [0, 2, 4], good[1], [0, 2, 4, 4, 9], [99] * 5, good[2], [0, 2, 4, 4.0, 9]]
    values, valid = tok.decode_many(batch)
    assert valid.tolist() == [True, False, True, False, False, True, False]
    assert values[valid].tolist() == [-3.5, 0.0, 42.0]
    assert np.isnan(values[~valid]).all() and values.dtype == np.float64
    arr_values, arr_valid = tok.decode_many(np.array(good + [[1, 3, 4, 4, 9]]))
    assert arr_valid.tolist() == [True, True, True, False]  # leading mantissa zero
    assert np.array_equal(arr_values[:3], values[valid])
    empty_values, empty_valid = tok.decode_many(np.zeros((0, tok.length), dtype=np.int64))
    assert empty_values.shape == (0,) and empty_valid.shape == (0,)


# ---------------------------------------------------------------- describe / registry


@pytest.mark.parametrize("tok", TOKENIZERS, ids=IDS)
def test_describe_build_roundtrip(tok: NumberTokenizer) -> None:
    spec = json.loads(json.dumps(tok.describe()))
    rebuilt = build_number_tokenizer(spec)
    assert type(rebuilt) is type(tok) and rebuilt == tok
    assert rebuilt.tokens == tok.tokens and np.array_equal(rebuilt.allowed, tok.allowed)
    y = (tok.low + tok.high) / 2 + 0.123 * (tok.high - tok.low) / 4
    assert rebuilt.encode_ids(y) == tok.encode_ids(y)


def test_registry_and_config_build() -> None:
    assert set(number_tokenizer_names()) >= {"normalized", "ieee", "p10"}
    assert build_number_tokenizer(NumbersConfig()) == NormalizedDigits(2, 8)
    assert build_number_tokenizer(NumbersConfig(tokenizer="ieee", mantissa_digits=3)) == IEEEStyle(2, 3)
    # a whole `numbers:` section is a valid spec: irrelevant keys are ignored
    section = dataclasses.asdict(NumbersConfig(tokenizer="p10", mantissa_digits=3, min_exponent=-4))
    assert build_number_tokenizer(section) == P10(3, -4, 10)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"tokenizer": "binary"}, "numbers.tokenizer"),
        ({"base": 2}, "numbers.tokenizer"),
        ({"tokenizer": "normalized", "base": 1}, "numbers.base must be in 2..10, got 1"),
        ({"tokenizer": "normalized", "base": 11}, "numbers.base"),
        ({"tokenizer": "normalized", "length": 17}, "numbers.length must be in 1..16, got 17"),
        ({"tokenizer": "normalized", "length": 0}, "numbers.length"),
        ({"tokenizer": "normalized", "length": 8.0}, "numbers.length must be an integer"),
        ({"tokenizer": "normalized", "length": True}, "numbers.length"),
        ({"tokenizer": "normalized", "digits": 4}, "'digits'"),
        ({"tokenizer": "ieee", "exponent_digits": 3}, "numbers.exponent_digits"),
        ({"tokenizer": "ieee", "mantissa_digits": 16}, "numbers.mantissa_digits"),
        ({"tokenizer": "p10", "min_exponent": 5, "max_exponent": 4}, "numbers.max_exponent must be >="),
        ({"tokenizer": "p10", "max_exponent": 299}, "numbers.max_exponent"),
        ({"tokenizer": "p10", "min_exponent": -301}, "numbers.min_exponent"),
    ],
)
def test_registry_errors_name_the_key(spec: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        build_number_tokenizer(spec)


def test_numbers_config_validate() -> None:
    assert NumbersConfig().validate().tokenizer == "normalized"
    for field in dataclasses.fields(NumbersConfig):
        assert field.type in ("int", "float", "str", "bool", "None") or field.type in (int, float, str, bool)
    bad = [
        (NumbersConfig(base=1), "numbers.base"),
        (NumbersConfig(tokenizer="ieee", exponent_digits=0), "numbers.exponent_digits"),
        (NumbersConfig(scaler="log"), "numbers.scaler"),
        (NumbersConfig(scaler_margin=0.5), "numbers.scaler_margin"),
        (NumbersConfig(scaler_margin="0.1"), "numbers.scaler_margin"),  # type: ignore[arg-type]
        (NumbersConfig(scaler="identity", scaler_margin=0.1), "numbers.scaler_margin"),
    ]
    for cfg, fragment in bad:
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            cfg.validate()


def test_import_pulls_no_heavy_packages() -> None:
    code = (
        "import sys, rlreg.numbers\n"
        "heavy = [m for m in ('torch', 'pandas', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- expert targets


def test_expert_normalized_by_hand() -> None:
    tok = NormalizedDigits(2, 4)  # 0.6 * 16 = 9.6 -> bin 9 -> bits 1001
    assert tok.encode_ids(0.6) == [1, 0, 0, 1]
    assert [tok.expert_next_ids(0.6, [1, 0, 0, 1][:t]) for t in range(4)] == [1, 0, 0, 1]
    assert tok.expert_next_ids(0.6, [1, 1]) == 0  # 11.. >= 0.75 > 0.6: go as small as possible
    assert tok.expert_next_ids(0.6, [1, 1, 0]) == 0
    assert tok.expert_next_ids(0.6, [0]) == 1  # 0... < 0.5 < 0.6: go as large as possible
    assert tok.expert_next_ids(0.6, [0, 1, 1]) == 1
    dec = NormalizedDigits(10, 3)  # 0.2345 -> 234
    assert dec.expert_next_ids(0.2345, [2, 4]) == 0
    assert dec.expert_next_ids(0.2345, [2, 2]) == 9
    assert dec.expert_next_ids(0.2345, [2, 3]) == 4
    assert dec.expert_next_ids(1.7, []) == 9  # out-of-range targets are clipped first


def test_expert_ieee_by_hand() -> None:
    tok = IEEEStyle(1, 2)
    t = tok.token_to_id
    ids = lambda *names: [t[n] for n in names]  # noqa: E731
    # -35 = -3.5e+1 -> <-> <E+> 1 | 3 5
    assert tok.encode(-35.0) == ["<->", "<E+>", "<d1>", "<d3>", "<d5>"]
    assert tok.expert_next_ids(-35.0, ids("<->")) == t["<E+>"]
    assert tok.expert_next_ids(-35.0, ids("<+>")) == t["<E->"]  # positive > y: smallest positive
    # |.| <= 9.9 < 35 -> value above y -> smallest value -> largest magnitude under <E->: exponent 0
    assert tok.expert_next_ids(-35.0, ids("<->", "<E->")) == t["<d0>"]
    assert tok.expert_next_ids(-35.0, ids("<->", "<E+>", "<d2>")) == t["<d1>"]  # -1.x e2 < y: smallest magnitude
    assert tok.expert_next_ids(-35.0, ids("<->", "<E+>", "<d1>", "<d4>")) == t["<d0>"]  # -4x < y
    assert tok.expert_next_ids(-35.0, ids("<->", "<E+>", "<d1>", "<d2>")) == t["<d9>"]  # -2x > y
    wide = IEEEStyle(2, 2)
    w = wide.token_to_id
    # 3.0 = <+> <E+> 00 30; <E-> 00 also means exponent 0, so the prefix <+> <E-> is still exact
    assert wide.expert_next_ids(3.0, [w["<+>"], w["<E->"]]) == w["<d0>"]
    assert wide.expert_next_ids(3.0, [w["<+>"], w["<E->"], w["<d0>"], w["<d0>"]]) == w["<d3>"]
    assert wide.expert_next_ids(3.0, [w["<+>"], w["<E->"], w["<d0>"], w["<d1>"]]) == w["<d9>"]  # 10^-1 too small
    assert wide.expert_next_ids(3.0, [w["<+>"], w["<E+>"], w["<d1>"]]) == w["<d0>"]  # 10^1x too big: exponent 10


def test_expert_p10_by_hand() -> None:
    tok = P10(3, -5, 5)
    t = tok.token_to_id
    assert tok.encode(5.0) == ["<+>", "<d5>", "<d0>", "<d0>", "<E-2>"]
    assert tok.expert_next_ids(5.0, [t["<+>"], t["<d6>"]]) == t["<d0>"]
    assert tok.expert_next_ids(5.0, [t["<+>"], t["<d4>"]]) == t["<d9>"]
    assert tok.expert_next_ids(5.0, [t["<+>"], t["<d6>"], t["<d0>"], t["<d0>"]]) == t["<E-2>"]  # 6.00
    assert tok.expert_next_ids(5.0, [t["<+>"], t["<d0>"], t["<d9>"], t["<d9>"]]) == t["<E-2>"]  # 0.99 beats 9.9
    assert tok.expert_next_ids(5.0, [t["<->"]]) == t["<d0>"]  # negative: get as close to 0 as possible
    assert tok.expert_next_ids(-5.0, [t["<->"], t["<d4>"]]) == t["<d9>"]  # -4.xx > -5: most negative next
    with pytest.raises(InvalidNumber):
        tok.expert_next_ids(5.0, [t["<d4>"]])  # digit at the sign position
    with pytest.raises(InvalidNumber):
        tok.expert_next_ids(5.0, tok.encode_ids(5.0))  # nothing left to predict


@pytest.mark.parametrize("tok", TOKENIZERS, ids=IDS)
def test_expert_rollout_from_empty_prefix_is_the_encoding(tok: NumberTokenizer) -> None:
    @FAST
    @given(in_range(tok))
    def check(y: float) -> None:
        prefix: list[int] = []
        for _ in range(tok.length):
            prefix.append(tok.expert_next_ids(y, prefix))
        assert tok.decode_ids(prefix) == tok.decode_ids(tok.encode_ids(y))
        assert tok.expert_ids_for_sequence(y, prefix) == prefix

    check()


@pytest.mark.parametrize("tok", [NormalizedDigits(3, 4), NormalizedDigits(2, 6), IEEEStyle(1, 2)], ids=repr)
def test_expert_completion_is_error_minimising(tok: NumberTokenizer) -> None:
    """Greedy expert completion of any allowed prefix is as close to y as the best completion."""
    all_seqs = np.array(list(itertools.product(*[tok.allowed_ids(p) for p in range(tok.length)])))
    all_values, _ = tok.decode_many(all_seqs)

    @FAST
    @given(in_range(tok), allowed_sequences(tok), st.integers(0, tok.length - 1))
    def check(y: float, seq: list[int], cut: int) -> None:
        prefix = seq[:cut]
        done = list(prefix)
        while len(done) < tok.length:
            done.append(tok.expert_next_ids(y, done))
        match = np.all(all_seqs[:, :cut] == np.array(prefix, dtype=np.int64), axis=1)
        best = np.abs(all_values[match] - y).min()
        assert abs(tok.decode_ids(done) - y) <= best + 1e-12 * max(1.0, abs(y))

    check()


def test_expert_p10_exponent_is_error_minimising() -> None:
    tok = P10(2, -3, 3)

    @FAST
    @given(in_range(tok), allowed_sequences(tok))
    def check(y: float, seq: list[int]) -> None:
        prefix = seq[:-1]
        best = min(abs(tok.decode_ids(prefix + [e]) - y) for e in tok.allowed_ids(tok.length - 1))
        assert abs(tok.decode_ids(prefix + [tok.expert_next_ids(y, prefix)]) - y) == best

    check()
