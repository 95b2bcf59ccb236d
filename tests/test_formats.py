import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exposure_audit.data.formats import Format, Hole
from exposure_audit.errors import AuditError


def test_space_size_of_each_class():
    assert Format.parse("{d:9}").space_size == 10**9
    assert Format.parse("{x:8}").space_size == 16**8
    assert Format.parse("{a:5}").space_size == 26**5
    assert Format.parse("{A:2}").space_size == 26**2
    assert Format.parse("{w:6}").space_size == 36**6
    assert Format.parse("{[ACGT]:8}").space_size == 4**8
    assert Format.parse("pin {d}").space_size == 10


def test_several_holes_with_text_between():
    f = Format.parse("card {d:4} {d:4} {d:4} {d:4}")
    assert f.space_size == 10**16
    assert f.secret_length == 16
    assert f.render("1234567812345678") == "card 1234 5678 1234 5678"
    assert f.secret_of("card 1234 5678 1234 5678") == "1234567812345678"
    assert f.prefix == "card "


def test_space_beyond_64_bits_is_exact():
    f = Format.parse("key {w:20}")
    assert f.space_size == 36**20 > 2**64
    last = f.space_size - 1
    assert f.fill(last) == "9" * 20
    assert f.index(f.fill(last)) == last
    assert f.index("a" * 20) == 0


def test_literal_braces():
    f = Format.parse("{{x}} is {d:2}")
    assert f.render("07") == "{x} is 07"
    assert f.prefix == "{x} is "


def test_custom_set_ranges_and_escapes():
    assert Format.parse("{[a-f0-9]:1}").holes[0].alphabet == "abcdef0123456789"
    assert Format.parse(r"{[\]\-x]:1}").holes[0].alphabet == "]-x"
    assert Format.parse("{[-ab]:2}").holes[0].alphabet == "-ab"


def test_index_order_is_lexicographic_first_char_most_significant():
    f = Format.parse("{[ab]:1}-{d:2}")
    assert [f.fill(i) for i in range(4)] == ["a00", "a01", "a02", "a03"]
    assert f.fill(10) == "a10"
    assert f.fill(100) == "b00"


@pytest.mark.parametrize(
    "bad",
    [
        "no holes here",
        "{d:0}",
        "{q:3}",
        "{d:x}",
        "{d:3",
        "a } b",
        "{[]:2}",
        "{[aa]:2}",
        "{[z-a]:1}",
        "{d:99999}",
        "two\nlines {d}",
    ],
)
def test_malformed_formats_are_errors(bad):
    with pytest.raises(AuditError):
        Format.parse(bad)


def test_render_rejects_foreign_secret():
    f = Format.parse("pin {d:4}")
    with pytest.raises(AuditError):
        f.render("12a4")
    with pytest.raises(AuditError):
        f.render("123")
    with pytest.raises(AuditError):
        f.secret_of("pin 12345")


def test_sampling_is_uniform():
    f = Format.parse("{[abc]:1}{d}")  # 30 outcomes
    rng = random.Random(7)
    n = 30_000
    counts = Counter(f.sample(rng, n, distinct=False))
    assert len(counts) == 30
    # chi-square with 29 degrees of freedom: 99.9th percentile is about 58.3
    expected = n / 30
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 58.3


def test_distinct_sampling_and_exhaustion():
    f = Format.parse("{d:2}")
    got = f.sample(random.Random(1), 100)
    assert sorted(got) == sorted(f.fill(i) for i in range(100))
    with pytest.raises(AuditError):
        f.sample(random.Random(1), 101)


def test_sampling_huge_space_reaches_high_indices():
    f = Format.parse("{w:30}")
    idx = f.sample_indices(random.Random(3), 200)
    assert max(idx) > f.space_size // 2  # not capped at 2**64 or 2**53
    assert all(0 <= i < f.space_size for i in idx)


alphabet_st = st.sampled_from(["d", "x", "a", "A", "w", "[ACGT]", "[xyz]"])
format_st = st.lists(
    st.tuples(st.text(alphabet="abc :-", max_size=3), alphabet_st, st.integers(1, 4)), min_size=1, max_size=3
).map(lambda parts: "".join(f"{t}{{{c}:{n}}}" for t, c, n in parts))


@settings(max_examples=150, deadline=None)
@given(format_st, st.data())
def test_round_trip_index_fill_render(source, data):
    f = Format.parse(source)
    i = data.draw(st.integers(0, f.space_size - 1))
    secret = f.fill(i)
    assert f.index(secret) == i
    assert f.secret_of(f.render(secret)) == secret


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_parser_never_crashes(text):
    try:
        f = Format.parse(text)
    except AuditError:
        return
    assert f.space_size >= 1
    assert isinstance(f.holes[0], Hole)
