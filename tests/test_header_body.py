"""Header and body: the JSON contract round-trips, every rule refuses with its field path,
attachments and the size limit, and the header/body agreement check."""

from __future__ import annotations

import copy
import json
import os
import stat
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from strategies import REFERENCE_UNITS, bodies, headers, messages

from exchange.core import body as body_module
from exchange.core.body import (
    MAX_BODY_BYTES,
    Attachment,
    Body,
    Organisation,
    Person,
    check_body_against_header,
    load_body_file,
    safe_file_name,
)
from exchange.core.header import DataSubject, Header, Subjects, load_header_file
from exchange.core.jsonfile import LineIndex, parse_document
from exchange.core.vocab import (
    HandlingCode,
    InformationAccuracy,
    Kind,
    SpecialCategory,
    SubjectCategory,
)
from exchange.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# The header of DESIGN.md section 8, as written there (id left to be generated).
CONTRACT_HEADER: dict[str, Any] = {
    "kind": "REQUEST",
    "sender": "AL.CTD",
    "to": ["EU.EUROPOL"],
    "cc": [],
    "channel": "CT",
    "crime_area": "terrorism",
    "purpose": "cross_checking",
    "priority": "normal",
    "case": None,
    "in_reply_to": None,
    "classification": "RESTREINT_UE",
    "handling": {
        "codes": ["H0", "H2"],
        "h3": {"no_third_party": False, "only_units": [], "use_until": None, "text": ""},
    },
    "evaluation": {"source": "B", "information": "2"},
    "subjects": {
        "individuals": [{"category": "suspect", "minor": False}],
        "legal_entities": 0,
        "special_categories": [],
        "justification": "",
    },
}


def header_json(**changes: Any) -> dict[str, Any]:
    """The contract header with ``changes`` applied; keys are dotted paths."""
    data = copy.deepcopy(CONTRACT_HEADER)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target: Any = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return data


DELETE = object()


# --------------------------------------------------------------------------- header


def test_contract_header_round_trips() -> None:
    header = Header.from_json(CONTRACT_HEADER, new_id=lambda: "msg-1")
    assert header.id == "msg-1"
    assert header.kind is Kind.REQUEST
    assert header.recipients == ("EU.EUROPOL",)
    assert header.handling.codes == {HandlingCode.H0, HandlingCode.H2}
    assert header.evaluation is not None
    assert header.evaluation.information is InformationAccuracy.KNOWN_PERSONALLY_TO_SOURCE
    assert header.evaluation.code == "B2"
    assert header.retention_years == 3
    out = header.to_json()
    assert out == {"id": "msg-1", **CONTRACT_HEADER, "retention_years": 3}
    assert Header.from_json(out) == header
    assert Header.from_json(json.loads(json.dumps(out))) == header


def test_example_header_file_loads_and_agrees_with_the_example_body() -> None:
    header = load_header_file(EXAMPLES / "header-request.json")
    body = load_body_file(EXAMPLES / "body-request.json")
    assert header.sender == "AL.CTD"
    assert set(header.recipients) <= set(REFERENCE_UNITS)
    assert check_body_against_header(body, header.subjects) == []


def test_id_is_generated_when_absent_or_null() -> None:
    first = Header.from_json(CONTRACT_HEADER)
    second = Header.from_json(header_json(id=None))
    assert first.id != second.id
    assert len(first.id) == 36  # a UUID4
    assert Header.from_json(header_json(id="given-1")).id == "given-1"


def test_optional_fields_take_their_defaults() -> None:
    minimal = header_json(cc=DELETE, priority=DELETE, case=DELETE, in_reply_to=DELETE)
    minimal["handling"] = {"codes": ["H0"]}
    header = Header.from_json(minimal)
    assert header.cc == ()
    assert header.priority.value == "normal"
    assert header.handling.h3.is_empty


@given(headers())
@settings(max_examples=200)
def test_every_generated_header_round_trips_through_json(header: Header) -> None:
    assert Header.from_json(header.to_json()) == header
    assert Header.from_json(json.loads(json.dumps(header.to_json()))) == header


def test_recipients_are_to_then_cc_each_once() -> None:
    header = Header.from_json(header_json(to=["EU.EUROPOL", "RS.CTU"], cc=["AT.ENU"]))
    assert header.recipients == ("EU.EUROPOL", "RS.CTU", "AT.ENU")
    duplicated = header.with_recipients(("EU.EUROPOL",), ("EU.EUROPOL", "AT.ENU"))
    assert duplicated.recipients == ("EU.EUROPOL", "AT.ENU")
    assert header.with_id("other").id == "other"
    assert header.with_id("other").sender == header.sender


def subjects_of(*individuals: tuple[SubjectCategory, bool], **kw: Any) -> Subjects:
    return Subjects(tuple(DataSubject(c, m) for c, m in individuals), **kw)


@pytest.mark.parametrize(
    ("declared", "needs"),
    [
        (subjects_of(), False),
        (subjects_of((SubjectCategory.SUSPECT, False)), False),
        (subjects_of((SubjectCategory.VICTIM, False)), True),
        (subjects_of((SubjectCategory.WITNESS, False)), True),
        (subjects_of((SubjectCategory.SUSPECT, True)), True),
        (
            subjects_of(
                (SubjectCategory.SUSPECT, False),
                special_categories=frozenset({SpecialCategory.HEALTH}),
            ),
            True,
        ),
    ],
)
def test_victims_witnesses_minors_and_special_categories_need_justification(
    declared: Subjects, needs: bool
) -> None:
    assert declared.needs_justification is needs


def test_personal_data_means_individuals_not_companies() -> None:
    assert not subjects_of(legal_entities=3).has_personal_data
    assert subjects_of((SubjectCategory.OTHER, False)).has_personal_data


# Each case: changes to the contract header, the field path named, a reason fragment.
REFUSED: dict[str, tuple[dict[str, Any], str, str]] = {
    "malformed_sender": ({"sender": "al.ctd"}, "sender", "'al.ctd' is not a unit id"),
    "malformed_recipient": ({"to": ["EU.EUROPOL", "EUROPOL"]}, "to[1]", "is not a unit id"),
    "no_recipient": ({"to": []}, "to", "at least one recipient"),
    "to_not_a_list": ({"to": "EU.EUROPOL"}, "to", "must be a list, not a string"),
    "to_missing": ({"to": DELETE}, "to", "is required"),
    "sender_among_recipients": (
        {"cc": ["AL.CTD"]},
        "cc[0]",
        "the sender AL.CTD cannot also be a recipient",
    ),
    "recipient_twice": ({"cc": ["EU.EUROPOL"]}, "cc[0]", "EU.EUROPOL is listed twice"),
    "bad_kind": ({"kind": "QUESTION"}, "kind", "'QUESTION' is not one of REQUEST, REPLY"),
    "bad_channel": ({"channel": "CT-SIENA"}, "channel", "is not one of SIENA, CT, ARO"),
    "crime_outside_mandate": (
        {"crime_area": "shoplifting"},
        "crime_area",
        "crime outside the agency's mandate is refused",
    ),
    "bad_purpose": ({"purpose": "curiosity"}, "purpose", "'curiosity' is not one of"),
    "bad_priority": ({"priority": "high"}, "priority", "not one of normal, urgent, urgent_direct"),
    "classification_too_high": (
        {"classification": "SECRET_UE"},
        "classification",
        "accredited up to CONFIDENTIEL_UE",
    ),
    "bad_subject_category": (
        {
            "subjects__individuals": [
                {"category": "suspect", "minor": False},
                {"category": "suspekt", "minor": False},
            ]
        },
        "subjects.individuals[1].category",
        "'suspekt' is not one of suspect, contact, victim, witness, informant, other",
    ),
    "minor_not_declared": (
        {"subjects__individuals": [{"category": "suspect"}]},
        "subjects.individuals[0].minor",
        "is required",
    ),
    "minor_as_text": (
        {"subjects__individuals": [{"category": "suspect", "minor": "false"}]},
        "subjects.individuals[0].minor",
        "must be true or false",
    ),
    "individuals_not_declared": (
        {"subjects__individuals": DELETE},
        "subjects.individuals",
        "is required",
    ),
    "bad_special_category": (
        {"subjects__special_categories": ["religion"]},
        "subjects.special_categories[0]",
        "'religion' is not one of racial_or_ethnic_origin",
    ),
    "special_categories_without_individuals": (
        {"subjects__individuals": [], "subjects__special_categories": ["health"]},
        "subjects.special_categories",
        "declare the individuals concerned",
    ),
    "negative_legal_entities": (
        {"subjects__legal_entities": -1},
        "subjects.legal_entities",
        "must be at least 0",
    ),
    "boolean_legal_entities": (
        {"subjects__legal_entities": True},
        "subjects.legal_entities",
        "must be a whole number",
    ),
    "no_evaluation_with_individuals": (
        {"evaluation": None},
        "evaluation",
        "evaluation codes (source and information) are required",
    ),
    "bad_source_reliability": (
        {"evaluation__source": "E"},
        "evaluation.source",
        "'E' is not one of A, B, C, X",
    ),
    "bad_information_accuracy": (
        {"evaluation__information": "5"},
        "evaluation.information",
        "'5' is not one of 1, 2, 3, 4",
    ),
    "reply_without_request": ({"kind": "REPLY"}, "in_reply_to", "must name the request"),
    "request_in_reply": (
        {"in_reply_to": "msg-0"},
        "in_reply_to",
        "a REQUEST has in_reply_to null",
    ),
    "information_in_reply": (
        {"kind": "INFORMATION", "in_reply_to": "msg-0"},
        "in_reply_to",
        "a INFORMATION has in_reply_to null",
    ),
    "reply_to_itself": (
        {"id": "msg-1", "kind": "REPLY", "in_reply_to": "msg-1"},
        "in_reply_to",
        "cannot reply to itself",
    ),
    "unknown_top_level_keys": (
        {"recipients": ["AT.ENU"], "crime": "terrorism"},
        "recipients",
        "unknown keys 'recipients', 'crime'",
    ),
    "unknown_nested_key": (
        {"handling__h3__no_third_parties": True},
        "handling.h3.no_third_parties",
        "did you mean 'no_third_party' instead of 'no_third_parties'?",
    ),
    "h0_missing": ({"handling__codes": ["H2"]}, "handling.codes", "H0 is always present"),
    "h3_without_restriction": (
        {"handling__codes": ["H0", "H3"]},
        "handling.h3",
        "H3 is set, so state the restriction",
    ),
    "h3_restriction_without_h3": (
        {"handling__h3__no_third_party": True},
        "handling.codes",
        "H3 must be among the codes",
    ),
    "bad_handling_code": ({"handling__codes": ["H0", "H4"]}, "handling.codes[1]", "H0, H1"),
    "malformed_only_unit": (
        {"handling__codes": ["H0", "H3"], "handling__h3__only_units": ["austria"]},
        "handling.h3.only_units[0]",
        "is not a unit id",
    ),
    "bad_use_until": (
        {"handling__codes": ["H0", "H3"], "handling__h3__use_until": "31.12.2026"},
        "handling.h3.use_until",
        "'31.12.2026' is not a date (YYYY-MM-DD)",
    ),
    "malformed_id": ({"id": "has space"}, "id", "'has space' is not an id"),
    "malformed_case": ({"case": ""}, "case", "is not an id"),
    "retention_too_long": ({"retention_years": 4}, "retention_years", "must be at most 3"),
    "justification_too_long": (
        {"subjects__justification": "x" * 2001},
        "subjects.justification",
        "longer than 2000",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_header_rule_refuses_with_field_path(case: str) -> None:
    changes, field, reason = REFUSED[case]
    with pytest.raises(InputError) as caught:
        Header.from_json(header_json(**changes), source="h.json")
    assert caught.value.location.field == field
    assert reason in caught.value.reason
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_header_file_error_names_the_line(tmp_path: Path, case: str) -> None:
    changes, field, _reason = REFUSED[case]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(header_json(**changes), indent=2), encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_header_file(path)
    assert caught.value.location.source == str(path)
    assert caught.value.location.field == field
    assert caught.value.location.line is not None


def test_header_error_reads_file_line_field_reason(tmp_path: Path) -> None:
    text = json.dumps(
        header_json(subjects__individuals=[{"category": "suspekt", "minor": False}]), indent=2
    )
    path = tmp_path / "h.json"
    path.write_text(text, encoding="utf-8")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "suspekt" in row)
    with pytest.raises(InputError) as caught:
        load_header_file(path)
    assert str(caught.value) == (
        f"{path}, line {line}, field 'subjects.individuals[0].category': 'suspekt' is not one "
        "of suspect, contact, victim, witness, informant, other"
    )


def test_header_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(InputError, match="must be an object, not a list"):
        load_header_file(path)


def test_json_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text('{\n  "kind": "REQUEST",\n  "sender": "AL.CTD"\n  "to": []\n}\n', "utf-8")
    with pytest.raises(InputError) as caught:
        load_header_file(path)
    assert caught.value.location.line == 4
    assert "not valid JSON" in caught.value.reason
    assert "column 3" in caught.value.reason


def test_duplicate_json_key_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text('{\n  "to": ["AT.ENU"],\n  "to": ["EU.EUROPOL"]\n}\n', "utf-8")
    with pytest.raises(InputError) as caught:
        load_header_file(path)
    assert (caught.value.location.line, caught.value.location.field) == (3, "to")
    assert "appears twice" in caught.value.reason


def test_header_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_bytes(b'{\n"text": "\xff"}')
    with pytest.raises(InputError, match="not UTF-8") as caught:
        load_header_file(path)
    assert caught.value.location.line == 2


def test_missing_header_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such header file"):
        load_header_file(tmp_path / "absent.json")


def test_header_in_yaml_reads_numbers_and_norway_as_written(tmp_path: Path) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(
        "kind: REQUEST\nsender: AL.CTD\nto: [NO.KRIPOS]\nchannel: SIENA\n"
        "crime_area: cybercrime\npurpose: information_exchange\nclassification: UNCLASSIFIED\n"
        "handling: {codes: [H0, H3], h3: {use_until: 2026-12-31}}\n"
        "evaluation: {source: A, information: 1}\n"
        "subjects: {individuals: [{category: other, minor: false}], legal_entities: 0}\n",
        encoding="utf-8",
    )
    header = load_header_file(path)
    assert header.to == ("NO.KRIPOS",)
    assert header.handling.h3.use_until == date(2026, 12, 31)
    assert header.evaluation is not None
    assert header.evaluation.information is InformationAccuracy.KNOWN_TO_SOURCE


# --------------------------------------------------------------------------- loading


def test_yaml_booleans_are_only_true_and_false() -> None:
    data, _ = parse_document("country: NO\nflag: yes\nok: true\n", "x.yaml", syntax="yaml")
    assert data == {"country": "NO", "flag": "yes", "ok": True}


def test_yaml_alias_bomb_is_indexed_in_linear_time() -> None:
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    start = time.perf_counter()
    _data, lines = parse_document("\n".join(rows) + "\n", "bomb.yaml", syntax="yaml")
    assert lines.line("a8") == 9
    assert time.perf_counter() - start < 2


def test_line_index_falls_back_to_the_nearest_ancestor() -> None:
    text = '{\n  "a": {\n    "b": [\n      1,\n      {"c": 2}\n    ]\n  }\n}\n'
    _data, lines = parse_document(text, "x.json", syntax="json")
    assert lines.line("a") == 2
    assert lines.line("a.b[1].c") == 5
    assert lines.line("a.b[1].missing") == 5
    assert lines.line("a.b[0]") == 4
    assert lines.line("zzz") == 1  # a missing top-level key: the document itself
    assert LineIndex.empty().line("a") is None


def test_json_strings_with_escapes_do_not_confuse_the_line_scanner() -> None:
    text = '{"a": "x\\"}\\n{",\n "b": ["[", "]"],\n "c": {"d": "}"}}'
    _data, lines = parse_document(text, "x.json", syntax="json")
    assert (lines.line("a"), lines.line("b[1]"), lines.line("c.d")) == (1, 2, 3)


# --------------------------------------------------------------------------- body


def test_example_body_reads_its_attachment() -> None:
    body = load_body_file(EXAMPLES / "body-request.json")
    assert [p.family_name for p in body.persons] == ["DOE"]
    assert body.persons[0].birth_date == date(1990, 1, 1)
    (photo,) = body.attachments
    assert photo.content == (EXAMPLES / "photo.jpg").read_bytes()
    assert photo.content.startswith(b"\xff\xd8")
    assert photo.media_type == "image/jpeg"
    summary = body.to_json()["attachments"][0]
    assert summary == {
        "name": "photo.jpg",
        "media_type": "image/jpeg",
        "size": photo.size,
        "sha256": photo.sha256,
    }
    assert "content" not in repr(photo)


def test_body_round_trips_with_attachments_written_to_a_folder(tmp_path: Path) -> None:
    body = load_body_file(EXAMPLES / "body-request.json")
    out = tmp_path / "received"
    data = body.to_json(out)
    assert data["attachments"] == [
        {"name": "photo.jpg", "media_type": "image/jpeg", "path": "photo.jpg"}
    ]
    written = out / "photo.jpg"
    assert written.read_bytes() == body.attachments[0].content
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert Body.from_json(data, base_dir=out) == body


@given(bodies())
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_every_generated_body_round_trips_through_json(body: Body) -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = json.loads(json.dumps(body.to_json(Path(folder))))
        assert Body.from_json(data, base_dir=Path(folder)) == body


@given(messages())
@settings(max_examples=60)
def test_generated_messages_agree_with_their_header(message: tuple[Header, Body]) -> None:
    header, body = message
    assert check_body_against_header(body, header.subjects) == []


def test_empty_body_is_valid() -> None:
    assert Body.from_json({}, base_dir=Path()) == Body()
    assert Body().size == 0


def test_absolute_attachment_paths_are_read(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello")
    body = Body.from_json({"attachments": [{"path": str(path)}]}, base_dir=Path("/nonexistent"))
    assert body.attachments == (Attachment("notes.txt", "text/plain", b"hello"),)


def test_missing_attachment_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        Body.from_json(
            {"attachments": [{"name": "x.pdf", "path": "gone.pdf"}]},
            base_dir=tmp_path,
            source="b.json",
        )
    assert caught.value.location.field == "attachments[0].path"
    assert f"no such file: {tmp_path / 'gone.pdf'}" in caught.value.reason


def test_attachment_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="is not a file"):
        Body.from_json({"attachments": [{"path": "folder"}]}, base_dir=tmp_path)


def test_attachment_over_the_size_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as handle:
        handle.truncate(MAX_BODY_BYTES + 1)  # sparse: costs no disk and is never read
    with pytest.raises(InputError) as caught:
        Body.from_json({"attachments": [{"path": "huge.bin"}]}, base_dir=tmp_path)
    assert caught.value.location.field == "attachments[0].path"
    assert "would exceed 50 MB (52,428,800 bytes)" in caught.value.reason


def test_text_and_attachments_count_together_against_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(body_module, "MAX_BODY_BYTES", 100)
    (tmp_path / "a.bin").write_bytes(b"a" * 60)
    (tmp_path / "b.bin").write_bytes(b"b" * 30)
    ok = Body.from_json(
        {"text": "x" * 10, "attachments": [{"path": "a.bin"}, {"path": "b.bin"}]},
        base_dir=tmp_path,
    )
    assert ok.size == 100
    with pytest.raises(InputError) as caught:
        Body.from_json(
            {"text": "x" * 11, "attachments": [{"path": "a.bin"}, {"path": "b.bin"}]},
            base_dir=tmp_path,
        )
    assert caught.value.location.field == "attachments[1].path"
    with pytest.raises(InputError) as caught:
        Body.from_json({"text": "é" * 51}, base_dir=tmp_path)  # 102 bytes in UTF-8
    assert caught.value.location.field == "text"


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"persons": [{"family_name": "DOE"}]}, "persons[0].role", "is required"),
        (
            {"persons": [{"family_name": "DOE", "role": "suspekt"}]},
            "persons[0].role",
            "'suspekt' is not one of suspect",
        ),
        (
            {"persons": [{"family_name": " ", "role": "suspect"}]},
            "persons[0].family_name",
            "must not be empty",
        ),
        (
            {"persons": [{"family_name": "DOE", "role": "suspect", "birth_date": "1990-02-30"}]},
            "persons[0].birth_date",
            "'1990-02-30' is not a date",
        ),
        (
            {"persons": [{"family_name": "DOE", "role": "suspect", "nationality": "ALB"}]},
            "persons[0].nationality",
            "is not a two-letter country code",
        ),
        (
            {"persons": [{"family_name": "DOE", "role": "suspect", "surname": "X"}]},
            "persons[0].surname",
            "unknown key 'surname'",
        ),
        ({"organisations": [{"country": "AT"}]}, "organisations[0].name", "is required"),
        ({"vehicles": [{"plate": ""}]}, "vehicles[0].plate", "must not be empty"),
        ({"documents": [{"kind": "passport"}]}, "documents[0].number", "is required"),
        ({"phones": ["call me"]}, "phones[0]", "is not a phone number"),
        ({"phones": "+355 69 000 0000"}, "phones", "must be a list"),
        ({"attachments": [{"name": "x.jpg"}]}, "attachments[0].path", "is required"),
        (
            {"attachments": [{"path": "photo.jpg", "name": "../photo.jpg"}]},
            "attachments[0].name",
            "is not a plain file name",
        ),
        (
            {"attachments": [{"path": "photo.jpg", "media_type": "jpeg"}]},
            "attachments[0].media_type",
            "is not a media type",
        ),
        (
            {"attachments": [{"path": "photo.jpg"}, {"path": "photo.jpg", "name": "PHOTO.JPG"}]},
            "attachments[1].name",
            "two attachments are named 'PHOTO.JPG'",
        ),
        ({"txt": "hello"}, "txt", "did you mean 'text' instead of 'txt'?"),
    ],
)
def test_body_rule_refuses_with_field_path(data: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        Body.from_json(data, base_dir=EXAMPLES, source="b.json")
    assert caught.value.location.field == field
    assert reason in caught.value.reason


def test_body_file_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(
        '{\n  "text": "x",\n  "persons": [\n    {"family_name": "DOE",\n'
        '     "role": "suspekt"}\n  ]\n}\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError) as caught:
        load_body_file(path)
    assert (caught.value.location.line, caught.value.location.field) == (5, "persons[0].role")


def test_received_attachment_names_cannot_escape_the_folder(tmp_path: Path) -> None:
    hostile = Body(
        attachments=(
            Attachment("../../.bashrc", "text/plain", b"1"),
            Attachment("/etc/passwd", "text/plain", b"2"),
            Attachment("..\\evil.txt", "text/plain", b"3"),
            Attachment("PASSWD", "text/plain", b"4"),
            Attachment("", "text/plain", b"5"),
        )
    )
    out = tmp_path / "inbox"
    data = hostile.to_json(out)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(a["path"] for a in data["attachments"])
    assert all(p.parent == out for p in out.iterdir())
    assert [a["path"] for a in data["attachments"]] == [
        "bashrc",
        "passwd",
        "evil.txt",
        "PASSWD-2",
        "attachment",
    ]


@pytest.mark.parametrize(
    ("name", "taken", "expected"),
    [
        ("photo.jpg", (), "photo.jpg"),
        ("photo.jpg", ("PHOTO.JPG",), "photo-2.jpg"),
        ("photo.jpg", ("photo.jpg", "photo-2.jpg"), "photo-3.jpg"),
        ("a/b/c.txt", (), "c.txt"),
        ("..", (), "attachment"),
        (".hidden", (), "hidden"),
        ("bell\x07.txt", (), "bell.txt"),
    ],
)
def test_safe_file_name(name: str, taken: tuple[str, ...], expected: str) -> None:
    assert safe_file_name(name, taken) == expected


# --------------------------------------------------------------------------- header vs body


def person(role: SubjectCategory, minor: bool = False) -> Person:
    return Person("EXAMPLE", "Fictitious", None, "AL", role, minor)


COMPANY = Organisation("Example Trading Ltd", "AT", "FN 12345")
S, V, W = SubjectCategory.SUSPECT, SubjectCategory.VICTIM, SubjectCategory.WITNESS

AGREEMENT_CASES: dict[str, tuple[Subjects, Body, list[str]]] = {
    "agree": (
        subjects_of((S, False), (V, True), legal_entities=1),
        Body(persons=(person(V, True), person(S)), organisations=(COMPANY,)),
        [],
    ),
    "nothing_declared_nothing_named": (subjects_of(), Body(text="statistics only"), []),
    "more_persons_than_declared": (
        subjects_of((S, False)),
        Body(persons=(person(S), person(S))),
        [
            "the header declares 1 individual, the body names 2 persons",
            "the header declares 1 suspect, the body names 2",
        ],
    ),
    "undeclared_person": (
        subjects_of(),
        Body(persons=(person(W),)),
        [
            "the header declares 0 individuals, the body names 1 person",
            "the header declares 0 witness, the body names 1",
        ],
    ),
    "other_category": (
        subjects_of((S, False)),
        Body(persons=(person(V),)),
        [
            "the header declares 1 suspect, the body names 0",
            "the header declares 0 victim, the body names 1",
        ],
    ),
    "undeclared_minor": (
        subjects_of((S, False)),
        Body(persons=(person(S, minor=True),)),
        ["the header declares 0 minors, the body names 1"],
    ),
    "minor_in_another_category": (
        subjects_of((S, True), (V, False)),
        Body(persons=(person(S), person(V, minor=True))),
        ["the minors are declared in other categories than the body gives them"],
    ),
    "legal_entities": (
        subjects_of(legal_entities=2),
        Body(organisations=(COMPANY,)),
        ["the header declares 2 legal entities, the body names 1 organisation"],
    ),
}


@pytest.mark.parametrize("case", sorted(AGREEMENT_CASES))
def test_check_body_against_header(case: str) -> None:
    declared, body, expected = AGREEMENT_CASES[case]
    assert check_body_against_header(body, declared) == expected


def test_body_files_are_written_atomically_and_privately(tmp_path: Path) -> None:
    # No temporary file is left behind beside the attachments.
    Body(attachments=(Attachment("a.txt", "text/plain", b"x"),)).to_json(tmp_path)
    assert os.listdir(tmp_path) == ["a.txt"]


def test_null_optional_fields_take_their_defaults() -> None:
    header = Header.from_json(
        header_json(priority=None, cc=None, retention_years=None, subjects__justification=None)
    )
    assert (header.priority.value, header.cc, header.retention_years) == ("normal", (), 3)
    assert header.subjects.justification == ""
    body = Body.from_json(
        {"text": None, "persons": [{"family_name": "DOE", "role": "suspect", "given_names": None}]},
        base_dir=EXAMPLES,
    )
    assert (body.text, body.persons[0].given_names) == ("", "")
