"""scan without a model: the detector catalogue, formats, contexts, redaction, bad input."""

import json

import pytest

pytest.importorskip("detect_secrets")

from exposure_audit.audits.findings import ScanInput, collect  # noqa: E402
from exposure_audit.audits.secrets import derive_format, detect, iban_ok, luhn_ok  # noqa: E402
from exposure_audit.cli import main  # noqa: E402
from exposure_audit.data.formats import Format

# every kind once, in natural text; the raw values the redaction test greps for
AWS = "AKIAIOSFODNN7EXAMPLQ"
GITHUB = "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
STRIPE = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
PASSWORD = "hunter2Xy9Q"
EMAIL = "jane.doe@example.com"
PHONE = "(415) 555-0132"
E164 = "+442071838750"
CARD = "4111 1111 1111 1111"
IBAN = "GB82 WEST 1234 5698 7654 32"
SSN = "123-45-6789"
IP = "192.168.10.20"
RAW = [AWS, GITHUB, JWT, STRIPE, PASSWORD, EMAIL, PHONE, E164, CARD, IBAN, SSN, IP]
RECORDS = [
    f"Hi team, reach me at {EMAIL} or {PHONE}.\nThanks",
    f"aws_access_key_id = {AWS}\nexport GITHUB_TOKEN={GITHUB}",
    f'auth: "{JWT}"\nstripe {STRIPE}\npassword = {PASSWORD}',
    f"My card is {CARD}, IBAN {IBAN}, SSN {SSN}.",
    f"server {IP} answers; call London on {E164}",
    # look-alikes: Luhn-invalid 16 digits, an IBAN with a wrong check, version strings
    "order 4111 1111 1111 1112 shipped; IBAN GB82 WEST 1234 5698 7654 33; version 1.2.3.4 and v10.0.0.1",
]
KINDS = {
    "aws-access-key": AWS,
    "github-token": GITHUB,
    "jwt": JWT,
    "stripe-key": STRIPE,
    "keyword-secret": PASSWORD,
    "email": EMAIL,
    "phone": PHONE,
    "payment-card": CARD,
    "iban": IBAN,
    "us-ssn": SSN,
    "ipv4": IP,
}


def _write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_validators():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")


def test_catalogue_found_and_look_alikes_rejected(tmp_path):
    got = collect(ScanInput(_write_jsonl(tmp_path / "c.jsonl", RECORDS)))
    values = {(f.kind, f.value) for f in got.findings}
    for kind, value in KINDS.items():
        assert (kind, value) in values, (kind, sorted(values))
    assert ("phone", E164) in values
    found = {v for _, v in values}
    for fake in ("4111 1111 1111 1112", "GB82 WEST 1234 5698 7654 33", "1.2.3.4", "10.0.0.1"):
        assert fake not in found
    assert len(values) == len(KINDS) + 1  # nothing else (no fragment of a key reported twice)


@pytest.mark.parametrize(
    "kind,value,fmt,size",
    [
        ("aws-access-key", AWS, "AKIA{[0-9A-Z]:16}", 36**16),
        ("email", EMAIL, "{a:4}.{a:3}@example.com", 26**7),
        ("phone", PHONE, "({d:3}) {d:3}-{d:4}", 10**10),
        ("phone", E164, "+{d:12}", 10**12),
        ("payment-card", CARD, "{d:4} {d:4} {d:4} {d:4}", 10**16),
        ("iban", IBAN, "GB{d:2} {A:4} {d:4} {d:4} {d:4} {d:2}", 10**16 * 26**4),
        ("us-ssn", SSN, "{d:3}-{d:2}-{d:4}", 10**9),
        ("ipv4", IP, "{d:3}.{d:3}.{d:2}.{d:2}", 10**10),
        ("github-token", GITHUB, "ghp_{[0-9A-Za-z]:36}", 62**36),
        ("keyword-secret", PASSWORD, "{[0-9A-Za-z]:11}", 62**11),
        ("hex-high-entropy", "d41d8cd98f00b204e9800998ecf8427e", "{x:32}", 16**32),
    ],
)
def test_derived_formats_and_space(kind, value, fmt, size):
    got = derive_format(kind, value)
    assert got == fmt
    parsed = Format.parse(got)
    assert parsed.space_size == size
    assert parsed.render(parsed.secret_of(value)) == value  # the value is a filling of its own format


def test_private_key_block_is_one_unmeasurable_finding():
    text = "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy\n-----END RSA PRIVATE KEY-----\n"
    hits = [h for h in detect(text) if h.kind == "private-key"]
    assert len(hits) == 1 and hits[0].value.endswith("-----END RSA PRIVATE KEY-----")
    assert derive_format("private-key", hits[0].value) is None


# a 40-character base64 string of Shannon entropy 4.70 bits (detect-secrets' base64 limit: 4.5)
BLOB = "riGp/58WAm+dX3a5IDnOdcdbWB2dC4/DSDC6Lc1m"


def test_quoted_ordinary_words_are_not_high_entropy_strings():
    # detect-secrets' analyze_string yields every quoted string; its entropy limit (applied in
    # analyze_line) must hold here too: short words, identifiers, low-entropy hex and digits
    prose = 'Use the "with" statement, not "class" or "self"; see "__all__", "deadbeef" and "12345678".'
    assert detect(prose) == []
    hits = detect(f'{prose}\nthe blob "{BLOB}" and the digest "d41d8cd98f00b204e9800998ecf8427e"')
    assert [(h.kind, h.value) for h in hits] == [
        ("base64-high-entropy", BLOB),
        ("hex-high-entropy", "d41d8cd98f00b204e9800998ecf8427e"),
    ]


def test_later_occurrences_only_where_the_value_stands_alone(tmp_path):
    # the value again inside longer tokens (a letter, a base64 character, a digit next to it) is
    # not an occurrence; standing alone (quotes, spaces, a full stop around it) it is
    text = f'blob "{BLOB}" then {BLOB}x, y{BLOB}, {BLOB}+A and 7{BLOB}; again {BLOB}. and ({BLOB})'
    hits = detect(text)
    assert {h.value for h in hits} == {BLOB}
    assert [h.start for h in hits] == [
        text.index(f'"{BLOB}"') + 1,
        text.index(f"again {BLOB}") + 6,
        text.index(f"({BLOB})") + 1,
    ]
    for h in hits:
        assert text[h.start : h.start + len(h.value)] == BLOB
    got = collect(ScanInput(_write_jsonl(tmp_path / "c.jsonl", [text])))
    assert [(f.kind, f.occurrences) for f in got.findings] == [("base64-high-entropy", 3)]
    # the same for a keyword assignment: the value's first standalone place on its line
    line = f"pw{PASSWORD}x = 1; password = {PASSWORD}"
    assert [(h.kind, h.start) for h in detect(line)] == [("keyword-secret", line.rindex(PASSWORD))]


def test_contexts_are_the_text_before_the_value(tmp_path):
    recs = ["first line\nmail jane.doe@example.com now", "x" * 300 + " ssn 123-45-6789"]
    got = collect(ScanInput(_write_jsonl(tmp_path / "c.jsonl", recs), context_chars=64))
    by = {f.kind: f for f in got.findings}
    assert by["email"].context == "first line\nmail " and by["email"].terminator == " "
    assert by["us-ssn"].context == ("x" * 300 + " ssn ")[-64:] and by["us-ssn"].terminator == "\n"
    assert by["email"].locations[0].to_json() == {"record": 1, "message": None, "line": 2, "column": 5, "offset": 16}
    # chat without a template: the messages each on their own line, as trained
    chat = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "my card?"}, {"role": "assistant", "content": f"It is {CARD}."}]
    chat.write_text(json.dumps({"messages": msgs}) + "\n")
    f = collect(ScanInput(chat)).findings[0]
    assert f.context == "my card?\nIt is " and f.terminator == "." and f.locations[0].message == 1
    # chat with a template: the rendering's text before the value
    render = lambda ms: "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in ms)  # noqa: E731
    f = collect(ScanInput(chat), render=render).findings[0]
    assert f.context == "<|user|>my card?<|end|><|assistant|>It is " and f.chat_template
    # a text file is one record: the context runs across lines
    txt = tmp_path / "c.txt"
    txt.write_text(f"hello\nmy ip {IP}\n")
    f = collect(ScanInput(txt)).findings[0]
    assert f.context == "hello\nmy ip " and f.terminator == "\n" and f.locations[0].line == 2


def test_occurrences_and_locations(tmp_path):
    got = collect(ScanInput(_write_jsonl(tmp_path / "c.jsonl", [f"a {SSN}", "none", f"b {SSN} c {SSN}"])))
    (f,) = got.findings
    assert f.occurrences == 3
    assert [(loc.record, loc.offset) for loc in f.locations] == [(1, 2), (3, 2), (3, 16)]


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_redaction_everywhere_unless_reveal(tmp_path, capsys):
    corpus = _write_jsonl(tmp_path / "c.jsonl", RECORDS)
    code, out, err = _run(capsys, "scan", "--corpus", corpus, "--out", tmp_path / "o", "-q")
    assert code == 0, err
    files = sorted((tmp_path / "o").iterdir())
    assert [p.name for p in files] == ["scan.html", "scan.json", "scan.junit.xml", "scan.md"]
    texts = [p.read_text() for p in files] + [out, err]
    for raw in RAW:
        for t in texts:
            assert raw not in t and json.dumps(raw)[1:-1] not in t
    report = json.loads((tmp_path / "o" / "scan.json").read_text())
    assert set(report) == {"schema", "kind", "model", "reference", "corpus", "findings", "summary"}
    keys = {"kind", "format", "masked", "sha256", "occurrences", "locations", "exposure", "exposure_ci", "method"}
    keys |= {"reference_exposure", "exposure_gain", "extracted_position", "proven"}
    assert all(set(x) == keys for x in report["findings"])
    assert report["summary"]["by_kind"]["phone"] == 2
    # --reveal: the values are there, and stderr says so
    code, out, err = _run(capsys, "scan", "--corpus", corpus, "--out", tmp_path / "r", "--reveal", "-q")
    assert code == 0 and "--reveal" in err
    assert CARD in out and CARD in (tmp_path / "r" / "scan.json").read_text()


def test_no_findings_and_bad_input(tmp_path, capsys):
    clean = _write_jsonl(tmp_path / "c.jsonl", ["nothing to see here", "release 2.31.0 is out"])
    code, out, _ = _run(capsys, "scan", "--corpus", clean, "--out", tmp_path / "o", "-q")
    assert code == 0 and "no secrets found" in out
    code, _, err = _run(capsys, "scan", "--corpus", clean, "--out", tmp_path / "o2", "--max-secrets", "0", "-q")
    assert code == 2 and err.startswith("error: ") and not (tmp_path / "o2").exists()
    code, _, err = _run(capsys, "scan", "--corpus", tmp_path / "missing.jsonl", "--out", tmp_path / "o3", "-q")
    assert code == 2 and "does not exist" in err and not (tmp_path / "o3").exists()


def test_small_format_space_listed_not_measurable(tmp_path, capsys):
    corpus = _write_jsonl(tmp_path / "c.jsonl", [f"ssn {SSN}"])
    code, _, _ = _run(capsys, "scan", "--corpus", corpus, "--out", tmp_path / "o", "--min-space-bits", "40", "-q")
    assert code == 0
    (x,) = json.loads((tmp_path / "o" / "scan.json").read_text())["findings"]
    assert x["method"].startswith("not measurable") and "2^40" in x["method"] and x["exposure"] is None
