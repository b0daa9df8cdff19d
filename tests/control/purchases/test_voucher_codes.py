"""Voucher codes: 80 random bits, easy to type, forgiving to read back."""

from __future__ import annotations

import math
import re

import pytest

from kswifi.control.purchases import voucher_codes

CODE = re.compile(r"^KSW(-[0-9A-HJKMNP-TV-Z]{4}){4}$")


def test_codes_have_the_documented_shape_and_at_least_80_bits() -> None:
    codes = {voucher_codes.new_code() for _ in range(5000)}
    assert len(codes) == 5000
    assert all(CODE.match(code) for code in codes)
    bits = voucher_codes.RANDOM_CHARS * math.log2(len(voucher_codes.ALPHABET))
    assert bits >= 80
    # every symbol of the alphabet turns up, at every position
    for position in range(4, 23):
        if position % 5 == 3:
            continue
        assert {code[position] for code in codes} == set(voucher_codes.ALPHABET)


def test_alphabet_has_no_lookalikes() -> None:
    assert len(voucher_codes.ALPHABET) == 32
    assert not set("ILOU") & set(voucher_codes.ALPHABET)


@pytest.mark.parametrize(
    "typed",
    [
        "KSW-ABCD-EFGH-JKMN-PQRS",
        "ksw-abcd-efgh-jkmn-pqrs",
        " ksw abcd efgh jkmn pqrs ",
        "KSWABCDEFGHJKMNPQRS",
        "ABCD-EFGH-JKMN-PQRS",
        "abcdefghjkmnpqrs",
    ],
)
def test_normalize_accepts_what_people_type(typed: str) -> None:
    assert voucher_codes.normalize(typed) == "KSW-ABCD-EFGH-JKMN-PQRS"


def test_normalize_reads_lookalikes_as_digits() -> None:
    assert voucher_codes.normalize("KSW-O0I1-L000-0000-0000") == "KSW-0011-1000-0000-0000"


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "KSW",
        "KSW-ABCD-EFGH-JKMN",
        "KSW-ABCD-EFGH-JKMN-PQRS-TVWX",
        "KSW-ABCD-EFGH-JKMN-PQR!",
        "KSW-UUUU-0000-0000-0000",
    ],
)
def test_normalize_rejects_what_cannot_be_a_code(typed: str) -> None:
    assert voucher_codes.normalize(typed) is None
