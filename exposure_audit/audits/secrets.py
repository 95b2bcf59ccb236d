"""Detectors for the secrets really in a corpus, and the format each found value gets.

Two sources, one interface (:func:`detect`: a line in, non-overlapping :class:`Hit` s out):

- **Credentials** through detect-secrets (Yelp, maintained; optional extra ``[scan]``): its
  plugins for AWS, GitHub, Slack, Stripe... keys, private keys, JWTs, ``password = ...``
  assignments and quoted high-entropy hex/base64 strings, called through its Python API
  (``plugin.analyze_string`` plus the library's own false-positive filters), one line at a time,
  never its network verification.
- **Personal data**: regular expressions with validators written here: e-mail, phone (NANP and
  E.164), payment cards (Luhn and an issuer prefix), IBAN (mod 97 and the country's length),
  US SSN (dashed, SSA rules), IPv4 (octets <= 255, no leading zeros, not a version string).

:func:`derive_format` gives a value its format in the format language (docs/method.md, "Formats
of found secrets"): fixed parts kept as text, variable parts holes of the observed class.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import AuditError

PII_KINDS = ("email", "phone", "payment-card", "iban", "us-ssn", "ipv4")


@dataclass(frozen=True)
class Hit:
    kind: str
    value: str
    start: int  # character offset in the line
    source: str  # "pii" or "detect-secrets"


# ---------------------------------------------------------------- validators


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_issuer(d: str) -> bool:
    """A known issuer prefix and length (Visa, Mastercard, Amex, Discover, JCB, Diners)."""
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)
    if 51 <= int(d[:2]) <= 55 or 2221 <= int(d[:4]) <= 2720:
        return n == 16
    if d[:2] in ("34", "37"):
        return n == 15
    if d.startswith("6011") or d.startswith("65") or 644 <= int(d[:3]) <= 649:
        return 16 <= n <= 19
    if d[:2] == "35":
        return 16 <= n <= 19
    if d[:2] in ("30", "36", "38"):
        return 14 <= n <= 19
    return False


# IBAN lengths of the countries most often met (ISO 13616 registry); others: 15..34 characters.
IBAN_LENGTHS = {
    "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27,
    "GB": 22, "GR": 27, "HU": 28, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28,
    "PT": 25, "RO": 24, "SE": 24, "SK": 24,
}  # fmt: skip


def iban_ok(compact: str) -> bool:
    want = IBAN_LENGTHS.get(compact[:2])
    if (want is not None and len(compact) != want) or not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


_VERSION_WORD = re.compile(r"(?:\b(?:v|ver|version|release|build|rev)\.?\s*|[vV])$", re.IGNORECASE)


def ipv4_ok(value: str, before: str) -> bool:
    octets = value.split(".")
    if any(len(o) > 1 and o[0] == "0" for o in octets) or any(int(o) > 255 for o in octets):
        return False
    return not _VERSION_WORD.search(before[-12:])  # "version 1.2.3.4", "v10.0.0.1": not addresses


# ---------------------------------------------------------------- personal data

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![\w-])")
_NANP = re.compile(r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\w)")
_E164 = re.compile(r"(?<![\w+])\+[1-9]\d{7,14}(?!\w)")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])")
_SSN = re.compile(r"(?<![\w-])(\d{3})-(\d{2})-(\d{4})(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")


def _email_ok(m: re.Match[str], line: str) -> bool:
    local, domain = m.group().split("@", 1)
    return not (local.startswith(".") or local.endswith(".") or ".." in local) and all(
        not (lab.startswith("-") or lab.endswith("-")) for lab in domain.split(".")
    )


def _nanp_ok(m: re.Match[str], line: str) -> bool:
    digits = re.sub(r"\D", "", m.group())
    digits = digits[1:] if len(digits) == 11 else digits
    return len(digits) == 10 and digits[0] in "23456789" and digits[3] in "23456789"


def _card_ok(m: re.Match[str], line: str) -> bool:
    text = m.group()
    seps = set(re.sub(r"\d", "", text))
    if len(seps) > 1:
        return False  # "1234 5678-..." mixes separators: not how a card is written
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and _card_issuer(digits) and luhn_ok(digits)


def _iban_ok(m: re.Match[str], line: str) -> bool:
    return iban_ok(m.group().replace(" ", ""))


def _ssn_ok(m: re.Match[str], line: str) -> bool:
    return ssn_ok(*m.groups())


def _ipv4_ok(m: re.Match[str], line: str) -> bool:
    return ipv4_ok(m.group(), line[: m.start()])


# (kind, pattern, validator); earlier entries win a tie on the same span
_PII: list[tuple[str, re.Pattern[str], Callable[[re.Match[str], str], bool]]] = [
    ("email", _EMAIL, _email_ok),
    ("iban", _IBAN, _iban_ok),
    ("payment-card", _CARD, _card_ok),
    ("us-ssn", _SSN, _ssn_ok),
    ("phone", _NANP, _nanp_ok),
    ("phone", _E164, lambda m, line: True),
    ("ipv4", _IPV4, _ipv4_ok),
]
# characters without which no PII pattern can match: a line lacking all of them is skipped
_PII_TRIGGER = re.compile(r"[@\d]")


def pii_hits(line: str) -> Iterator[Hit]:
    if not _PII_TRIGGER.search(line):
        return
    for kind, pattern, ok in _PII:
        for m in pattern.finditer(line):
            if ok(m, line):
                yield Hit(kind, m.group(), m.start(), "pii")


# ---------------------------------------------------------------- credentials (detect-secrets)

# detect-secrets' secret types -> this tool's kinds (stable names for reports and gates)
_DS_KIND = {
    "AWS Access Key": "aws-access-key",
    "GitHub Token": "github-token",
    "Slack Token": "slack-token",
    "Stripe Access Key": "stripe-key",
    "Private Key": "private-key",
    "JSON Web Token": "jwt",
    "Secret Keyword": "keyword-secret",
    "Hex High Entropy String": "hex-high-entropy",
    "Base64 High Entropy String": "base64-high-entropy",
}
_DS_SKIP = {"Public IP (ipv4)"}  # the IPv4 recognizer above validates its own


def _kind_of(secret_type: str) -> str:
    return _DS_KIND.get(secret_type) or re.sub(r"[^a-z0-9]+", "-", secret_type.lower()).strip("-")


@dataclass
class _DetectSecrets:
    plugins: list[Any]  # every default plugin but the keyword one, run over a whole text
    entropy_plugin: type  # detect-secrets' HighEntropyStringsPlugin: its limit applies here too
    keyword: Any  # the keyword plugin, run per line on lines naming a keyword
    keyword_regexes: dict[Any, int]  # its config-file rules: `password = x`, quotes optional
    keyword_trigger: re.Pattern[str]
    filters: list[Any]
    call: Callable[..., Any]


@lru_cache(maxsize=1)
def _detect_secrets() -> _DetectSecrets:
    """detect-secrets' default plugins and false-positive filters, loaded once (its settings are
    global state: the defaults are installed for the life of the process)."""
    try:
        from detect_secrets.core.scan import get_filters_with_parameter
        from detect_secrets.plugins import keyword
        from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin
        from detect_secrets.settings import default_settings, get_plugins, get_settings
        from detect_secrets.util.inject import call_function_with_arguments
    except ImportError:
        raise AuditError("scan needs detect-secrets: pip install 'exposure-audit[scan]'") from None
    ctx = default_settings()
    ctx.__enter__()  # kept entered: the defaults stay in force (no other code here configures it)
    get_settings().disable_filters("detect_secrets.filters.common.is_invalid_file")
    plugins = [p for p in get_plugins() if p.secret_type not in _DS_SKIP]
    kw = next(p for p in plugins if p.secret_type == "Secret Keyword")
    return _DetectSecrets(
        plugins=[p for p in plugins if p is not kw],
        entropy_plugin=HighEntropyStringsPlugin,
        keyword=kw,
        keyword_regexes=keyword.CONFIG_DENYLIST_REGEX_TO_GROUP,
        keyword_trigger=re.compile("|".join(keyword.DENYLIST), re.IGNORECASE),
        filters=get_filters_with_parameter("secret"),
        call=call_function_with_arguments,
    )


def _filtered(ds: _DetectSecrets, plugin: Any, secret: str, line: str) -> bool:
    for fn in ds.filters:
        try:
            if ds.call(fn, filename="corpus", secret=secret, plugin=plugin, line=line):
                return True
        except TypeError:
            pass  # a filter that needs what a line cannot give (the file, a diff)
    return False


_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_\-]*")
_JWT_TAIL = re.compile(r"[A-Za-z0-9_\-.]*")
_KEY_END = re.compile(r"-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----")
_UNTOUCHED = ("keyword-secret", "hex-high-entropy", "base64-high-entropy")


def _whole(kind: str, text: str, start: int, value: str) -> tuple[int, str]:
    """The whole secret around what a plugin reported: some report only a regex group (GitHub's
    ``ghp``, a JWT without its signature, a private key's BEGIN line)."""
    end = start + len(value)
    if kind == "private-key":
        begin = text.rfind("-----BEGIN", 0, end)
        m = _KEY_END.search(text, end)
        if begin >= 0 and m is not None:
            return begin, text[begin : m.end()]
        return start, value
    if kind in _UNTOUCHED:
        return start, value
    tail = (_JWT_TAIL if kind == "jwt" else _TOKEN_TAIL).match(text, end)
    return start, value + (tail.group() if tail else "")


def _line_at(text: str, pos: int) -> str:
    a = text.rfind("\n", 0, pos) + 1
    b = text.find("\n", pos)
    return text[a : b if b >= 0 else len(text)]


def _reported(ds: _DetectSecrets, plugin: Any, text: str) -> set[str]:
    """What a plugin reports in a text. A high-entropy plugin's ``analyze_string`` yields every
    quoted string of its charset (``"with"``); detect-secrets applies the entropy limit in
    ``analyze_line``, so it is applied here the same way: Shannon entropy strictly above the
    plugin's limit (base64 4.5, hex 3.0 by default, the hex figure lowered for all-digit strings)."""
    values = {v for v in plugin.analyze_string(text) if v}
    if isinstance(plugin, ds.entropy_plugin):
        values = {v for v in values if plugin.calculate_shannon_entropy(v) > plugin.entropy_limit}
    return values


def _continues(c: str, value: str, plugin: Any) -> bool:
    """Whether ``c``, next to an occurrence of ``value``, could be part of the same token: a
    letter, digit or underscore, a character of the plugin's charset (high-entropy strings), or a
    punctuation character the value itself holds (``+`` and ``/`` in a base64 key)."""
    if c.isalnum() or c == "_":
        return True
    if c.isspace() or c in "\"'":
        return False
    return c in value or c in getattr(plugin, "charset", "")


def _standalone(text: str, at: int, whole: str, plugin: Any) -> bool:
    """The occurrence at ``at`` is a token of its own, not part of a longer word (``with`` inside
    ``without``)."""
    end = at + len(whole)
    before = at > 0 and _continues(text[at - 1], whole, plugin)
    after = end < len(text) and _continues(text[end], whole, plugin)
    return not (before or after)


def credential_hits(text: str) -> Iterator[Hit]:
    """detect-secrets' findings in a text (a record's text, any number of lines). Every
    occurrence of a reported value is a hit where it stands as a token of its own."""
    ds = _detect_secrets()
    found: list[tuple[Any, str, int]] = []  # (plugin, value, where to look from)
    for plugin in ds.plugins:
        found.extend((plugin, v, 0) for v in _reported(ds, plugin, text))
    if ds.keyword_trigger.search(text):
        pos = 0
        for line in text.split("\n"):
            if ds.keyword_trigger.search(line):
                for v in set(ds.keyword.analyze_string(line, denylist_regex_to_group=ds.keyword_regexes)):
                    if v:
                        found.append((ds.keyword, v, pos))
            pos += len(line) + 1
    seen: set[tuple[str, int]] = set()
    for plugin, value, origin in found:
        kind = _kind_of(plugin.secret_type)
        start = text.find(value, origin)
        while start >= 0:
            at, whole = _whole(kind, text, start, value)
            alone = kind == "private-key" or _standalone(text, at, whole, plugin)  # a key: its markers
            if alone and not _filtered(ds, plugin, value, _line_at(text, start)):
                if (whole, at) not in seen:
                    seen.add((whole, at))
                    yield Hit(kind, whole, at, "detect-secrets")
                if plugin is ds.keyword:
                    break  # a keyword value is the one on its own line
            start = text.find(value, start + len(value))


# ---------------------------------------------------------------- one text

_PREFER = {"hex-high-entropy": 0, "base64-high-entropy": 1}  # the same span: the narrower class wins


def detect(text: str, *, credentials: bool = True) -> list[Hit]:
    """Every finding in a text, non-overlapping: the longest span wins where two overlap (a card
    number inside a keyword assignment is reported once, as the longer match)."""
    hits = list(pii_hits(text))
    if credentials:
        hits.extend(credential_hits(text))
    hits.sort(key=lambda h: (-len(h.value), h.start, _PREFER.get(h.kind, 0)))
    taken: list[tuple[int, int]] = []
    out = []
    for h in hits:
        a, b = h.start, h.start + len(h.value)
        if any(a < y and x < b for x, y in taken):
            continue
        taken.append((a, b))
        out.append(h)
    return sorted(out, key=lambda h: h.start)


# ---------------------------------------------------------------- formats

_CLASS_LADDER = (  # smallest first: a run gets the first class holding all its characters
    ("d", set("0123456789")),
    ("a", set("abcdefghijklmnopqrstuvwxyz")),
    ("A", set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")),
    ("x", set("0123456789abcdef")),
    ("w", set("abcdefghijklmnopqrstuvwxyz0123456789")),
    ("[0-9A-Z]", set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")),
    ("[0-9A-Za-z]", set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")),
)
_BASE64URL = "[0-9A-Za-z_\\-]"


def _lit(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _set_of(chars: set[str]) -> str:
    """A custom class ``[...]``: letters and digits as ranges where whole, the rest escaped."""
    body = ""
    for lo, hi, full in (("0", "9", "0123456789"), ("A", "Z", None), ("a", "z", None)):
        span = set(full or "".join(chr(c) for c in range(ord(lo), ord(hi) + 1)))
        if span <= chars:
            body += f"{lo}-{hi}"
            chars = chars - span
    for c in sorted(chars):
        body += "\\" + c if c in "\\]-[{}" else c
    return f"[{body}]"


def class_of(chars: set[str]) -> str:
    """The smallest class of the ladder holding ``chars``; else letters and digits plus the
    observed punctuation."""
    for spec, members in _CLASS_LADDER:
        if chars <= members:
            return spec
    return _set_of(chars | _CLASS_LADDER[-1][1])


def _hole(spec: str, n: int) -> str:
    return f"{{{spec}:{n}}}"


def runs_format(value: str, fixed: str = "") -> str:
    """``fixed`` kept as text, then each maximal run of ASCII letters and digits one hole of the
    smallest class holding it; every other character (separators) kept as text."""
    out = [_lit(fixed)]
    for m in re.finditer(r"[0-9A-Za-z]+|[^0-9A-Za-z]+", value):
        run = m.group()
        if run[0].isascii() and run[0].isalnum():
            out.append(_hole(class_of(set(run)), len(run)))
        else:
            out.append(_lit(run))
    return "".join(out)


def token_format(value: str, fixed: str = "", spec: str | None = None) -> str:
    """``fixed`` kept, the rest one hole of ``spec`` (default: the smallest class holding it)."""
    rest = value[len(fixed) :]
    if not rest:
        return _lit(value)
    return _lit(fixed) + _hole(spec or class_of(set(rest)), len(rest))


_KNOWN_PREFIX = re.compile(
    r"^(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9]|gh[pousr]_|github_pat_|xox[abposr]-|sk_live_|rk_live_|sk_test_|pk_live_)"
)


def derive_format(kind: str, value: str) -> str | None:
    """The value's format (docs/method.md): None where the language cannot hold it (a line break:
    a private key block)."""
    if "\n" in value or "\r" in value:
        return None
    if kind == "email":
        local, domain = value.rsplit("@", 1)
        return runs_format(local) + _lit("@" + domain)  # the domain is kept: the address's owner is the secret
    if kind in ("phone", "payment-card", "us-ssn", "ipv4"):
        return runs_format(value)
    if kind == "iban":
        return runs_format(value[2:], fixed=value[:2])  # the country code is kept
    if kind == "jwt":
        return ".".join(token_format(part, spec=_BASE64URL) if part else "" for part in value.split("."))
    m = _KNOWN_PREFIX.match(value)
    fixed = m.group() if m else ""
    if kind == "slack-token":
        return runs_format(value[len(fixed) :], fixed=fixed)
    if kind == "base64-high-entropy":
        body = value.rstrip("=")
        return token_format(body) + value[len(body) :]
    if kind == "hex-high-entropy":
        return token_format(value, spec="x" if value == value.lower() else "[0-9A-Fa-f]")
    return token_format(value, fixed=fixed)
