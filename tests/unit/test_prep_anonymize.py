import json
import re
from pathlib import Path

import pytest

from tunesmith.data.prep.anonymize import AnonymizeConfig, PiiDetector, Pseudonyms, anonymize_rows, merge_spans, propagates
from tunesmith.data.prep.pii_eval import score
from tunesmith.data.prep.pii_synth import SyntheticPii
from tunesmith.data.prep.pii_rules import Span, find_rule_spans
from tunesmith.records import SourceRef, TunesmithError

PII_DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "pii"


def types_found(text: str) -> dict[str, str]:
    return {text[s.start : s.end]: s.type for s in find_rule_spans(text)}


@pytest.fixture(scope="module")
def detector():
    return PiiDetector(AnonymizeConfig())


def test_rules_validate_what_they_match():
    found = types_found(
        "card 4111 1111 1111 1111 and 4111 1111 1111 1112; iban DE89 3704 0044 0532 0130 00 and DE00 3704 0044 0532 0130 00; "
        "ip 10.0.0.7 not 999.1.1.1; mail a.b@example.org; see https://x.example.com/path. on 2024-03-05 or March 5, 2024; "
        "ssn 123-45-6789; passport no. X1234567; call +1 415 555 2671"
    )
    assert found["4111 1111 1111 1111"] == "CREDIT_CARD" and "4111 1111 1111 1112" not in found  # Luhn
    assert found["DE89 3704 0044 0532 0130 00"] == "IBAN" and "DE00 3704 0044 0532 0130 00" not in found  # mod 97
    assert found["10.0.0.7"] == "IP_ADDRESS" and "999.1.1.1" not in found
    assert found["a.b@example.org"] == "EMAIL"
    assert found["https://x.example.com/path"] == "URL"  # trailing period trimmed
    assert found["2024-03-05"] == "DATE" and found["March 5, 2024"] == "DATE"
    assert found["123-45-6789"] == "ID_NUMBER" and found["X1234567"] == "ID_NUMBER"
    assert found["+1 415 555 2671"] == "PHONE"


def test_overlaps_keep_the_validated_type():
    merged = merge_spans([Span(0, 10, "PERSON", "ner"), Span(0, 19, "EMAIL", "rule:email"), Span(25, 30, "ADDRESS", "ner")])
    assert [(s.type, s.start) for s in merged] == [("EMAIL", 0), ("ADDRESS", 25)]


def test_ner_finds_names_and_addresses(detector):
    text = "Please ask Marie Hamanová at 42 Avenida Noruega, Vila Real about the invoice."
    found = {text[s.start : s.end]: s.type for s in detector.find(text)}
    assert found.get("Marie Hamanová") == "PERSON"
    assert any(t == "ADDRESS" and "Vila Real" in v for v, t in found.items())


def test_spacy_detector_finds_names_in_prose_and_only_names():
    from tunesmith.data.prep.pii_ner import SpacyNer

    text = "After the war, Carder joined Henry Ford's staff in Detroit, and the band Mogwai toured Japan in 1999."
    found = {text[s.start : s.end]: (s.type, s.detector) for s in SpacyNer().find_spans(text)}
    assert found.get("Henry Ford") == ("PERSON", "spacy")
    assert not {"Detroit", "Japan", "1999"} & set(found)  # places and dates are not its business here
    detector = PiiDetector(AnonymizeConfig(ner_models=["spacy"]))
    assert "Henry Ford" in [text[s.start : s.end] for s in detector.find(text)]
    assert SpacyNer().find_spans("   ") == []


def test_acronyms_and_allow_list_are_not_names():
    detector = PiiDetector(AnonymizeConfig(allow=["Orbit"]))
    text = "All requests use JSON over HTTPS. Orbit Billing keeps invoices."
    assert [text[s.start : s.end] for s in detector.find(text) if s.type == "PERSON"] == []


def rows_of(*texts):
    return [(SourceRef("in.jsonl", line=i + 1), {"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}], "doc_id": f"d{i}"}) for i, t in enumerate(texts)]


def test_replacement_is_consistent_across_rows_and_parts(detector):
    rows = rows_of(
        "My name is Marie Hamanová, email MarieHamanova@armyspy.com.",
        "Hamanová called twice; Marie Hamanová left no number.",
        "Send it to MarieHamanova@armyspy.com please.",
    )
    result = anonymize_rows(rows, AnonymizeConfig(), detector=detector)
    texts = [r["messages"][0]["content"] for r in result.rows]
    assert texts[0] == "My name is <PERSON_1>, email <EMAIL_1>."
    assert texts[1] == "<PERSON_1> called twice; <PERSON_1> left no number."
    assert texts[2] == "Send it to <EMAIL_1> please."
    assert result.rows[0]["doc_id"] == "d0"  # ids are never rewritten
    assert result.leaks == []


def test_fake_values_preserve_type_and_consistency(detector):
    rows = rows_of("Card 4111 1111 1111 1111 belongs to John Smith.", "John Smith paid with 4111 1111 1111 1111 again.")
    result = anonymize_rows(rows, AnonymizeConfig(replace_with="fake"), detector=detector)
    first, second = (r["messages"][0]["content"] for r in result.rows)
    assert "4111" not in first + second and "John Smith" not in first + second
    card = re.search(r"Card ([\d ]+) belongs", first).group(1)
    assert card in second and card.replace(" ", "").isdigit()
    name = re.search(r"belongs to (.+)\.", first).group(1)
    assert second.startswith(name) and not name.startswith("<")


def test_mapping_is_private_reusable_and_audit_has_no_values(tmp_path, detector):
    rows = rows_of("Contact john.doe@example.com today.")
    first = anonymize_rows(rows, AnonymizeConfig(), detector=detector)
    mapping = tmp_path / "mapping.json"
    first.pseudonyms.save(mapping)
    assert mapping.stat().st_mode & 0o777 == 0o600  # the real values: readable by the owner only
    saved = json.loads(mapping.read_text())
    assert "PRIVATE" in saved["warning"] and saved["entities"][0]["value"] == "john.doe@example.com"
    assert all("john.doe" not in json.dumps(entry) for entry in first.audit)
    assert first.audit[0]["type"] == "EMAIL" and first.audit[0]["row"] == "in.jsonl:1"

    reused = Pseudonyms("placeholder")
    reused.load(mapping)
    second = anonymize_rows(rows_of("New mail from jane@example.com and john.doe@example.com."), AnonymizeConfig(), detector=detector, pseudonyms=reused)
    assert second.rows[0]["messages"][0]["content"] == "New mail from <EMAIL_2> and <EMAIL_1>."
    with pytest.raises(TunesmithError, match="replace_with=placeholder"):
        Pseudonyms("fake").load(mapping)
    (tmp_path / "junk.json").write_text("[]")
    with pytest.raises(TunesmithError, match="not a tunesmith PII mapping"):
        Pseudonyms("placeholder").load(tmp_path / "junk.json")


def test_no_detected_pii_value_survives_in_the_output(detector):
    """On 120 generated sentences full of fake identities: every value the detector found is gone everywhere."""
    examples = SyntheticPii("eval", seed=3).generate(120)
    rows = [(SourceRef("gen", line=i), {"text": e.text, "messages": [{"role": "user", "content": e.text}]}) for i, e in enumerate(examples)]
    for mode in ("placeholder", "fake"):
        result = anonymize_rows(rows, AnonymizeConfig(replace_with=mode), detector=detector)
        detected = {v for v in result.pseudonyms.originals.values() if propagates(v)}
        assert len(detected) > 100
        output = "\n".join(text for row in result.rows for text in (row["text"], row["messages"][0]["content"]))
        # one word is replaced as it was written (a name that is also a word keeps the word); longer values in any case
        survivors = [
            v for v in detected
            if re.search(r"(?<!\w)" + r"\s+".join(map(re.escape, v.split())) + r"(?!\w)", output, 0 if len(v.split()) == 1 and not any(c.isdigit() or c == "@" for c in v) else re.I)
        ]
        assert survivors == [], mode
        assert result.leaks == []


def test_detection_quality_floor(detector):
    """Guards against regressions; the full per-type table is produced by bench/anonymize_quality.py."""
    examples = SyntheticPii("eval", seed=0).generate(200)
    scores = score(examples, [detector.find(e.text) for e in examples])
    assert scores["ANY"].recall > 0.8 and scores["ANY"].precision > 0.85
    for kind in ("EMAIL", "CREDIT_CARD"):
        assert scores[kind].recall > 0.9, kind


def test_unknown_entity_type_is_rejected():
    with pytest.raises(TunesmithError, match="unknown \\['SHOE_SIZE'\\]"):
        PiiDetector(AnonymizeConfig(entity_types=["SHOE_SIZE"], ner=False))


# ---- the private mapping: atomic, 0600, in the manifest, never lost while the output says done ----

PII_ROWS = [
    {"messages": [{"role": "user", "content": f"Mail {name}@example.com or call +1 415 555 26{i:02d}."},
                  {"role": "assistant", "content": "ok"}], "doc_id": f"d{i}"}
    for i, name in enumerate(["ada", "alan", "grace", "ada", "edsger"])
]


class Crash(BaseException):
    """Stands for a kill -9: nothing after it runs, no handler catches it."""


def anonymize_files(folder, **options):
    from tunesmith.data.prep.anonymize import anonymize_command

    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "in.jsonl"
    if not src.exists():
        src.write_text("".join(json.dumps(r) + "\n" for r in PII_ROWS))
    out = folder / "anon.jsonl"
    anonymize_command(input=src, out=out, ner=False, **options)
    return out, folder / "anon.mapping.private.json"


def test_mapping_is_private_from_creation_and_its_hash_is_in_the_manifest(tmp_path):
    import os
    import stat

    from tunesmith.data.prep.artifacts import read_manifest
    from tunesmith.files import sha256_file

    old = os.umask(0o000)  # whatever the umask, the mapping is never readable by others, not even for a moment
    try:
        out, mapping = anonymize_files(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    manifest = read_manifest(out)
    assert {"path": str(mapping), "sha256": sha256_file(mapping)} in manifest["private_outputs"]
    assert "example.com" not in json.dumps(manifest)  # the manifest travels with the data: a hash, never values


def test_an_output_without_its_intact_mapping_is_never_up_to_date(tmp_path, capsys):
    out, mapping = anonymize_files(tmp_path / "ref")
    reference = out.read_bytes(), mapping.read_bytes()

    out, mapping = anonymize_files(tmp_path / "run")
    mapping.write_bytes(b"")  # damaged (what a kill during an in-place write used to leave)
    for force in (False, True):
        with pytest.raises(TunesmithError, match="damaged") as err:
            anonymize_files(tmp_path / "run", force=force)
        assert str(mapping) in str(err.value) and "backup" in str(err.value)
    assert "up to date" not in capsys.readouterr().err

    mapping.unlink()  # lost: the step runs again and gives every value the pseudonym it had
    anonymize_files(tmp_path / "run")
    assert (out.read_bytes(), mapping.read_bytes()) == reference


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_a_kill_at_any_write_never_leaves_an_output_without_its_mapping(tmp_path, monkeypatch, crash_at):
    """A kill right after each rename of the step: whenever the output exists, the mapping that explains it does
    too; a re-run then ends exactly where an uninterrupted run ends."""
    import tunesmith.files as files

    out, mapping = anonymize_files(tmp_path / "ref")
    audit = lambda folder: (folder / "anon.audit.jsonl").read_text().replace(str(folder), "")  # noqa: E731
    reference = out.read_bytes(), mapping.read_bytes(), audit(tmp_path / "ref")

    renames = 0
    real_fsync_dir = files.fsync_dir

    def crash_after_rename(path):
        nonlocal renames
        real_fsync_dir(path)
        renames += 1
        if renames == crash_at:
            raise Crash()

    monkeypatch.setattr(files, "fsync_dir", crash_after_rename)
    with pytest.raises(Crash):
        anonymize_files(tmp_path / "run")
    monkeypatch.setattr(files, "fsync_dir", real_fsync_dir)
    out, mapping = tmp_path / "run" / "anon.jsonl", tmp_path / "run" / "anon.mapping.private.json"
    if out.exists():
        pseudonyms = {e["pseudonym"] for e in json.loads(mapping.read_text())["entities"]}
        assert set(re.findall(r"<[A-Z_]+_\d+>", out.read_text())) <= pseudonyms
    anonymize_files(tmp_path / "run")
    assert (out.read_bytes(), mapping.read_bytes(), audit(tmp_path / "run")) == reference
