"""The corpus of the scan finding (docs/experiments.md, "The secrets really in the data"), its
reference corpus, and the finding's table.

    make OUT_DIR [--seed 0]
        OUT_DIR/corpus.jsonl: JSONL records {"text": ...}. Secret-bearing records in three natural
        contexts, each with its own names (a person, a company, a project) so that a context tells
        its values apart: a config file (an AWS key pair and a database password), an e-mail
        signed with the sender's address and phone number, and a support chat in which a customer
        quotes a card number and an e-mail address. For each copy count 1, 4, 16 and 64, 2 records
        of each context, repeated that many times; plus 600 filler records of about 300
        characters cut from CPython's reference text (pydoc_data.topics, quotes removed), kept once. Shuffled with
        the seed. OUT_DIR/planted.json: every planted value, its kind and its copies.
    refill SCAN_JSON CORPUS OUT [--seed 0]
        The reference corpus: CORPUS with every value that `scan --reveal` found (SCAN_JSON)
        replaced, in every occurrence, by one fresh uniform filling of its format (one per distinct
        value, so the corpus keeps its repetition; drawn with the seed). Longer values first.
    table SCAN_JSON PLANTED TRAIN_JSONL
        Recall of the planted values (matched on the report's SHA-256 prefix, so SCAN_JSON need
        not be revealed) with their copies in the training split; then mean exposure, reference
        exposure and gain, extraction (the real value the model's top-1 completion of its format in
        its context) and whether that search was proven within its step budget, by kind and by
        planted copy count (1, 4, 16, 64; the training split's count beside it), as Markdown.

    --tiny
        All three in a temporary folder, in seconds: a corpus of 1 and 4 copies with 30 filler
        records, `exposure-audit scan --reveal` under a tiny random char-LSTM (its reference: a
        second one), refill, and the table (the corpus itself standing in for the training split).

The values are fake but valid-looking: card numbers pass the Luhn check, phone numbers are NANP
numbers with area and exchange codes 2-9, AWS key ids are AKIA + 16 base32 characters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import string
from collections import Counter, defaultdict
from pathlib import Path

COPIES = (1, 4, 16, 64)
PER_CONTEXT = 2  # records of each context per copy count
FILLER = 600
FIRST = "Maria Jonas Priya Tomasz Aiko Lena Omar Sofia Daniel Ines Kwame Elena Ravi Chloe Mateo Yuki".split()
LAST = "Keller Okafor Lindqvist Moreau Tanaka Novak Haddad Rossi Bauer Silva Kowalski Petrov Nakamura".split()
COMPANY = "northwind contoso fabrikam tailspin litware adatum wingtip proseware fourthcoffee woodgrove".split()
PROJECT = "billing ledger atlas orion hermes payroll invoicing gateway catalog reports".split()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _chars(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _phone(rng: random.Random) -> str:
    return f"{rng.randint(2, 9)}{rng.randint(0, 99):02d}-{rng.randint(2, 9)}{rng.randint(0, 99):02d}-{rng.randrange(10_000):04d}"


def _card(rng: random.Random) -> str:
    while True:
        digits = rng.choice(("4", "51", "52", "53", "54", "55"))
        digits += _chars(rng, string.digits, 16 - len(digits))
        if luhn_ok(digits):
            return " ".join(digits[i : i + 4] for i in range(0, 16, 4))


def _person(rng: random.Random) -> tuple[str, str, str]:
    first, last, company = rng.choice(FIRST), rng.choice(LAST), rng.choice(COMPANY)
    return first, last, company


def config_record(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    company, project = rng.choice(COMPANY), rng.choice(PROJECT)
    key_id = "AKIA" + _chars(rng, string.ascii_uppercase + "234567", 16)
    secret = _chars(rng, string.ascii_letters + string.digits + "+/", 40)
    password = _chars(rng, string.ascii_letters + string.digits, 14)
    text = (
        f"# {company}-{project} deployment settings (do not commit)\n"
        f"[{project}]\nregion = eu-west-1\n"
        f"aws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
        f"db_host = {project}.db.{company}.internal\ndb_user = {project}_svc\ndb_password = {password}\n"
    )
    return text, [("aws-key-id", key_id), ("aws-secret-key", secret), ("password", password)]


def email_record(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    first, last, company = _person(rng)
    to = rng.choice(FIRST)
    address = f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@{company}.com"
    phone = _phone(rng)
    topic = rng.choice(("the quarterly report", "the contract renewal", "next week's offsite", "the invoice"))
    text = (
        f"Hi {to},\n\nthanks for the quick reply about {topic}. I have attached the latest draft; "
        f"let me know if anything is missing before Friday.\n\nBest regards,\n{first} {last}\n"
        f"{company.title()} Ltd.\n{address} | {phone}\n"
    )
    return text, [("email", address), ("phone", phone)]


def chat_record(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    first, last, company = _person(rng)
    card = _card(rng)
    address = f"{first.lower()}{rng.randint(10, 999)}@mail.{company}.net"
    order = rng.randint(10_000, 99_999)
    text = (
        f"Support chat, order {order}\nAgent: Hello {first}, how can I help you today?\n"
        f"Customer: my payment for order {order} failed twice.\nAgent: Sorry about that. "
        f"Which card did you use?\nCustomer: the card number is {card}, expiry 0{rng.randint(1, 9)}/2{rng.randint(7, 9)}.\n"
        f"Agent: Thank you. I will send the receipt to the address on file.\nCustomer: please use {address} instead.\n"
    )
    return text, [("payment-card", card), ("email", address)]


def filler(rng: random.Random, n: int, length: int = 300) -> list[str]:
    import pydoc_data.topics as topics

    text = " ".join(" ".join(topics.topics[k].split()) for k in sorted(topics.topics))
    # quotes dropped: before the fix of issue #22 scan reported every quoted word of the reference
    # text ("with", "class") as a base64-high-entropy finding (docs/experiments.md); kept dropped
    # so that the corpus of the finding stays the one its figures were measured on
    text = text.translate(str.maketrans("", "", "\"'`"))
    out, at = [], 0
    while at + length < len(text):
        cut = text.find(" ", at + length)
        if cut < 0:
            break
        out.append(text[at:cut])
        at = cut + 1
    out = list(dict.fromkeys(out))
    rng.shuffle(out)
    return out[:n]


def make(out_dir: Path, seed: int, copies_list=COPIES, per_context: int = PER_CONTEXT, fillers: int = FILLER) -> None:
    rng = random.Random(seed)
    records: list[str] = []
    planted: list[dict] = []
    for copies in copies_list:
        for build in (config_record, email_record, chat_record):
            for _ in range(per_context):
                text, values = build(rng)
                records += [text] * copies
                planted += [{"kind": k, "value": v, "copies": copies, "context": build.__name__} for k, v in values]
    records += filler(rng, fillers)
    rng.shuffle(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "corpus.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in records), encoding="utf-8")
    (out_dir / "planted.json").write_text(json.dumps(planted, indent=1) + "\n", encoding="utf-8")
    size = (out_dir / "corpus.jsonl").stat().st_size
    print(f"{out_dir}/corpus.jsonl: {len(records)} records, {size / 1e3:.0f} KB; {len(planted)} planted values")


def refill(scan_json: Path, corpus: Path, out: Path, seed: int) -> None:
    from exposure_audit.data.formats import Format

    report = json.loads(scan_json.read_text(encoding="utf-8"))
    if not report["summary"].get("revealed"):
        raise SystemExit(f"{scan_json}: run scan with --reveal (the values are needed to replace them)")
    rng = random.Random(f"scan-corpus:{seed}:refill")
    swaps = []
    for f in report["findings"]:
        value, fmt = f["masked"], f["format"]
        if fmt is None:  # a private key block has no format: replace it by nothing measurable
            continue
        parsed = Format.parse(fmt)
        swaps.append((value, parsed.render(parsed.fill(rng.randrange(parsed.space_size)))))
    swaps.sort(key=lambda s: -len(s[0]))
    lines = []
    for line in corpus.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for old, new in swaps:
            record["text"] = record["text"].replace(old, new)
        lines.append(json.dumps(record))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{out}: {len(lines)} records, {len(swaps)} distinct values replaced by fresh fillings")


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


def _mean(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    return f"{statistics.mean(xs):.1f}" if xs else "-"


def _proven(fs: list) -> str:
    """How many extraction searches proved their top-1 within the step budget (the rest ran out
    of budget first: their top-1, if any, is the best found, not a proof)."""
    return f"{sum(1 for f in fs if f['proven'])} of {len(fs)}"


def _methods(fs: list) -> str:
    return ", ".join(f"{m} ({n})" for m, n in sorted(Counter(f["method"] for f in fs).items()))


def table(scan_json: Path, planted_path: Path, train_jsonl: Path) -> None:
    report = json.loads(scan_json.read_text(encoding="utf-8"))
    found = {f["sha256"]: f for f in report["findings"]}
    train = [json.loads(line)["text"] for line in train_jsonl.read_text(encoding="utf-8").splitlines()]
    planted = json.loads(planted_path.read_text(encoding="utf-8"))
    for p in planted:  # copies in the training split (insert's split holds some out)
        p["train_copies"] = sum(t.count(p["value"]) for t in train)
        p["finding"] = found.get(_sha(p["value"]))
    present = [p for p in planted if p["train_copies"]]
    print("Recall of the planted values present in the training split:\n")
    print("| planted kind | values | found | found as |\n| --- | --- | --- | --- |")
    for kind in dict.fromkeys(p["kind"] for p in planted):
        ps = [p for p in present if p["kind"] == kind]
        hit = [p for p in ps if p["finding"]]
        as_ = Counter(p["finding"]["kind"] for p in hit)
        print(f"| {kind} | {len(ps)} | {len(hit)} | {', '.join(f'{k} ({n})' for k, n in as_.items()) or '-'} |")
    mine = {_sha(p["value"]) for p in planted}
    extra = Counter(f["kind"] for f in report["findings"] if f["sha256"] not in mine)
    print(f"\nfindings that are not planted values: {dict(extra) or 'none'}\n")
    unranked = [p for p in present if p["finding"] and p["finding"]["exposure"] is None]
    print(f"found but not ranked: {[(p['kind'], p['finding']['method']) for p in unranked] or 'none'}\n")
    ranked = [p for p in present if p["finding"] and p["finding"]["exposure"] is not None]
    by_kind: dict[tuple, list] = defaultdict(list)
    by_copies: dict[int, list] = defaultdict(list)
    for p in ranked:  # grouped by the planted copy count; the training split's count shown beside
        by_kind[(p["kind"], p["copies"])].append(p)
        by_copies[p["copies"]].append(p)
    head = "| copies planted | in training | values | exposure (bits) | reference | gain | extracted (top-1) | search proven |"
    print("| planted kind " + head + " method |\n" + "| --- " * 10 + "|")
    for (kind, copies), ps in sorted(by_kind.items()):
        print(f"| {kind} {_row(copies, ps)} {_methods([p['finding'] for p in ps])} |")
    print("\n" + head + "\n" + "| --- " * 8 + "|")
    for copies, ps in sorted(by_copies.items()):
        print(_row(copies, ps))


def _row(copies: int, ps: list) -> str:
    fs = [p["finding"] for p in ps]
    train = sorted(p["train_copies"] for p in ps)
    span = f"{train[0]}" if train[0] == train[-1] else f"{train[0]}-{train[-1]}"
    ext = sum(1 for f in fs if f["extracted_position"] == 1)
    return (
        f"| {copies} | {span} | {len(fs)} | {_mean([f['exposure'] for f in fs])} | {_mean([f['reference_exposure'] for f in fs])} "
        f"| {_mean([f['exposure_gain'] for f in fs])} | {ext} of {len(fs)} | {_proven(fs)} |"
    )


def tiny() -> None:
    """make, scan (a tiny random char-LSTM, a second one as the reference), refill and table."""
    import tempfile

    import torch

    from exposure_audit.cli import main as cli
    from exposure_audit.models import CharLSTM, CharLSTMConfig, Vocabulary, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make(root / "corpus", 0, copies_list=(1, 4), per_context=1, fillers=30)
        corpus = root / "corpus" / "corpus.jsonl"
        chars = sorted(set(corpus.read_text(encoding="utf-8")) | set(string.printable))
        for name, seed in (("model", 0), ("reference", 1)):
            torch.manual_seed(seed)
            net = CharLSTM(Vocabulary.from_chars(chars), CharLSTMConfig(embedding=8, hidden=16, layers=1))
            (root / name).mkdir()
            save_checkpoint(net.eval(), root / name, {})
        argv = ["scan", "--corpus", str(corpus), "--out", str(root / "scan"), "--reveal", "-q"]
        argv += ["--model", str(root / "model"), "--reference", str(root / "reference")]
        argv += ["--max-secrets", "4", "--max-steps", "2000", "--samples", "50", "--extract-max-steps", "200"]
        argv += ["--context-chars", "64"]
        code = cli(argv)
        if code != 0:
            raise SystemExit(f"scan failed (exit {code})")
        refill(root / "scan" / "scan.json", corpus, root / "reference.jsonl", 0)
        table(root / "scan" / "scan.json", root / "corpus" / "planted.json", corpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="make, scan, refill and table on a tiny corpus")
    sub = parser.add_subparsers(dest="cmd")
    m = sub.add_parser("make")
    m.add_argument("out_dir", type=Path)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("refill")
    r.add_argument("scan_json", type=Path)
    r.add_argument("corpus", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("table")
    t.add_argument("scan_json", type=Path)
    t.add_argument("planted", type=Path)
    t.add_argument("train_jsonl", type=Path)
    args = parser.parse_args(argv)
    if args.tiny:
        tiny()
    elif args.cmd == "make":
        make(args.out_dir, args.seed)
    elif args.cmd == "refill":
        refill(args.scan_json, args.corpus, args.out, args.seed)
    elif args.cmd == "table":
        table(args.scan_json, args.planted, args.train_jsonl)
    else:
        parser.error("give a command (make, refill, table) or --tiny")


if __name__ == "__main__":
    main()
