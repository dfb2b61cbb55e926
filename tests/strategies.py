"""Hypothesis strategies for headers and bodies, for property tests across the suite.

Everything generated is valid by the JSON contract: ``Header.from_json(h.to_json())
== h`` holds for every header drawn, and :func:`messages` draws a header and a body
that agree (``check_body_against_header`` finds nothing), which an envelope round
trip needs. Units are drawn from the reference registry unless a list is given, so
a test with keys for only some units can pass those. Bodies stay small.

Import as ``from strategies import headers, bodies, messages`` (pytest puts
``tests/`` on the path).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

from hypothesis import strategies as st

from exchange.core.body import Attachment, Body, Document, Organisation, Person, Vehicle
from exchange.core.header import (
    DataSubject,
    Evaluation,
    H3Restrictions,
    Handling,
    Header,
    Subjects,
)
from exchange.core.registry import load_registry
from exchange.core.vocab import (
    Channel,
    Classification,
    CrimeArea,
    HandlingCode,
    InformationAccuracy,
    Kind,
    Priority,
    Purpose,
    SourceReliability,
    SpecialCategory,
    SubjectCategory,
)

__all__ = ["REFERENCE_UNITS", "bodies", "headers", "messages", "subjects"]

ROOT = Path(__file__).resolve().parent.parent
#: the unit ids of policies/registry.yaml, sorted
REFERENCE_UNITS: tuple[str, ...] = load_registry(ROOT / "policies" / "registry.yaml").ids

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"
# Names with letters of the region's alphabets, so UTF-8 handling is exercised too.
_NAME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyzÇËçëŠšĐđŽžĆćČčЉЊЏ -'"
_COUNTRIES = ("", "AL", "AT", "BA", "DE", "ME", "MK", "RS", "XK", "NO")
_MEDIA_TYPES = ("image/jpeg", "application/pdf", "text/plain", "application/octet-stream")

message_ids = st.one_of(
    st.uuids().map(str),
    st.text(_ID_ALPHABET, min_size=1, max_size=40).filter(lambda s: s[0].isalnum()),
)
short_text = st.text(max_size=40)
dates = st.dates(min_value=date(1920, 1, 1), max_value=date(2030, 12, 31))


def _names(min_size: int = 1) -> st.SearchStrategy[str]:
    return st.text(_NAME_ALPHABET, min_size=min_size, max_size=24).filter(
        lambda s: len(s.strip()) >= min_size
    )


@st.composite
def subjects(draw: st.DrawFn) -> Subjects:
    """A data-subject declaration (0-4 individuals, 0-3 legal entities)."""
    individuals = tuple(
        draw(
            st.lists(
                st.builds(DataSubject, st.sampled_from(SubjectCategory), st.booleans()),
                max_size=4,
            )
        )
    )
    special = (
        draw(st.frozensets(st.sampled_from(SpecialCategory), max_size=3))
        if individuals
        else frozenset()
    )
    return Subjects(
        individuals=individuals,
        legal_entities=draw(st.integers(0, 3)),
        special_categories=special,
        justification=draw(short_text),
    )


@st.composite
def _handling(draw: st.DrawFn, units: Sequence[str]) -> Handling:
    extra = draw(
        st.frozensets(st.sampled_from([HandlingCode.H1, HandlingCode.H2, HandlingCode.H3]))
    )
    codes = frozenset({HandlingCode.H0}) | extra
    if HandlingCode.H3 not in codes:
        return Handling(codes=codes, h3=H3Restrictions())
    h3 = draw(
        st.builds(
            H3Restrictions,
            no_third_party=st.booleans(),
            only_units=st.lists(st.sampled_from(units), unique=True, max_size=3).map(tuple),
            use_until=st.none() | dates,
            text=short_text,
        ).filter(lambda r: not r.is_empty)
    )
    return Handling(codes=codes, h3=h3)


@st.composite
def headers(draw: st.DrawFn, units: Sequence[str] | None = None) -> Header:
    """A header valid by the JSON contract, between units of ``units`` (at least 2)."""
    pool = list(units or REFERENCE_UNITS)
    sender = draw(st.sampled_from(pool))
    others = [u for u in pool if u != sender]
    addressed = draw(st.lists(st.sampled_from(others), min_size=1, max_size=4, unique=True))
    split = draw(st.integers(1, len(addressed)))
    kind = draw(st.sampled_from([Kind.REQUEST, Kind.REPLY, Kind.INFORMATION, Kind.NOTICE]))
    message_id = draw(message_ids)
    in_reply_to = None
    if kind is Kind.REPLY or (kind is Kind.NOTICE and draw(st.booleans())):
        in_reply_to = draw(message_ids.filter(lambda i: i != message_id))
    declared = draw(subjects())
    evaluations = st.builds(
        Evaluation, st.sampled_from(SourceReliability), st.sampled_from(InformationAccuracy)
    )
    # Evaluation codes are required with individuals, optional without.
    evaluation = draw(evaluations if declared.individuals else st.none() | evaluations)
    return Header(
        id=message_id,
        kind=kind,
        sender=sender,
        to=tuple(addressed[:split]),
        cc=tuple(addressed[split:]),
        channel=draw(st.sampled_from(Channel)),
        crime_area=draw(st.sampled_from(CrimeArea)),
        purpose=draw(st.sampled_from(Purpose)),
        priority=draw(st.sampled_from(Priority)),
        case=draw(st.none() | message_ids),
        in_reply_to=in_reply_to,
        classification=draw(st.sampled_from(Classification)),
        handling=draw(_handling(pool)),
        evaluation=evaluation,
        subjects=declared,
        retention_years=draw(st.integers(1, 3)),
    )


def _person(role: SubjectCategory, minor: bool) -> st.SearchStrategy[Person]:
    return st.builds(
        Person,
        family_name=_names(),
        given_names=_names(0),
        birth_date=st.none() | dates,
        nationality=st.sampled_from(_COUNTRIES),
        role=st.just(role),
        minor=st.just(minor),
    )


_organisations = st.builds(
    Organisation,
    name=_names(),
    country=st.sampled_from(_COUNTRIES),
    registration=st.text("FN0123456789 ", max_size=10),
)
_vehicles = st.builds(
    Vehicle,
    plate=st.text("ABCDEFGHJK0123456789-", min_size=1, max_size=10).filter(str.strip),
    country=st.sampled_from(_COUNTRIES),
    vin=st.none() | st.text("ABCDEFGHJKLMNPRSTUVWXYZ0123456789", min_size=17, max_size=17),
)
_documents = st.builds(
    Document,
    kind=st.sampled_from(["passport", "id_card", "driving_licence"]),
    number=st.text("ABCDEFGHJKLMNPRSTUVWXYZ0123456789", min_size=1, max_size=12),
    country=st.sampled_from(_COUNTRIES),
)
_phones = st.from_regex(r"\+[1-9][0-9]{1,3} [0-9]{2} [0-9]{3} [0-9]{4}", fullmatch=True)


@st.composite
def _attachments(draw: st.DrawFn) -> tuple[Attachment, ...]:
    stems = draw(
        st.lists(
            st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12),
            max_size=2,
            unique_by=str.lower,
        )
    )
    return tuple(
        Attachment(
            name=f"{stem}.bin",
            media_type=draw(st.sampled_from(_MEDIA_TYPES)),
            content=draw(st.binary(max_size=64)),
        )
        for stem in stems
    )


@st.composite
def bodies(draw: st.DrawFn, declared: Subjects | None = None) -> Body:
    """A small body; with ``declared``, its persons and organisations agree with it."""
    if declared is None:
        declared = draw(subjects())
    persons = tuple(draw(_person(s.category, s.minor)) for s in declared.individuals)
    organisations = tuple(draw(_organisations) for _ in range(declared.legal_entities))
    return Body(
        text=draw(st.text(max_size=200)),
        persons=persons,
        organisations=organisations,
        vehicles=tuple(draw(st.lists(_vehicles, max_size=2))),
        documents=tuple(draw(st.lists(_documents, max_size=2))),
        phones=tuple(draw(st.lists(_phones, max_size=2))),
        attachments=draw(_attachments()),
    )


@st.composite
def messages(draw: st.DrawFn, units: Sequence[str] | None = None) -> tuple[Header, Body]:
    """A header and a body that agrees with its data-subject declaration."""
    header = draw(headers(units))
    return header, draw(bodies(header.subjects))
