"""Conversion between the frozen domain types and their protobuf wire form.

Each kind of type converts at its own edge, once: this module is that edge for the
header and the body. Enum values map by name (``Kind.REQUEST`` <-> ``KIND_REQUEST``).
"""

from __future__ import annotations

from datetime import date
from typing import Any, TypeVar

from exchange.core.body import Attachment, Body, Document, Organisation, Person, Vehicle
from exchange.core.header import (
    DataSubject,
    Evaluation,
    H3Restrictions,
    Handling,
    Header,
    Subjects,
)
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
from exchange.errors import MalformedEnvelope
from exchange.wire.v1 import exchange_pb2 as pb

T = TypeVar("T")


def _to_wire_enum(prefix: str, member: object) -> int:
    name = getattr(member, "name", "")
    wire_enum = getattr(pb, prefix)
    return int(wire_enum.Value(f"{_PREFIX[prefix]}_{name}"))


_PREFIX = {
    "Kind": "KIND",
    "Channel": "CHANNEL",
    "Purpose": "PURPOSE",
    "Priority": "PRIORITY",
    "Classification": "CLASSIFICATION",
    "HandlingCode": "HANDLING_CODE",
    "SubjectCategory": "SUBJECT_CATEGORY",
    "SpecialCategory": "SPECIAL_CATEGORY",
    "PartnerStatus": "PARTNER_STATUS",
}


#: (wire enum, number, domain enum) -> member: decoding a header looks up a dozen
_FROM_WIRE: dict[tuple[str, int, type[Any]], Any] = {}


def _from_wire_enum(prefix: str, number: int, domain: type[T]) -> T:
    known = _FROM_WIRE.get((prefix, number, domain))
    if known is not None:
        return known  # type: ignore[no-any-return]
    member = _decode_wire_enum(prefix, number, domain)
    _FROM_WIRE[(prefix, number, domain)] = member
    return member


def _decode_wire_enum(prefix: str, number: int, domain: type[T]) -> T:
    wire_enum = getattr(pb, prefix)
    try:
        name = str(wire_enum.Name(number))
    except ValueError:
        raise MalformedEnvelope(f"{prefix} value {number} is not known") from None
    short = name.removeprefix(_PREFIX[prefix] + "_")
    try:
        return domain[short]  # type: ignore[index,no-any-return]
    except KeyError:
        raise MalformedEnvelope(f"{prefix} value {name} is not allowed here") from None


def _date_or_none(text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise MalformedEnvelope(f"{text!r} is not an ISO date") from None


# --------------------------------------------------------------------------- header


def header_to_wire(header: Header) -> pb.Header:
    """The wire header for ``header`` (suite, time and digests are set by the sealer)."""
    wire = pb.Header(
        id=header.id,
        case_id=header.case or "",
        kind=_to_wire_enum("Kind", header.kind),  # type: ignore[arg-type]
        in_reply_to=header.in_reply_to or "",
        sender=header.sender,
        to=list(header.to),
        cc=list(header.cc),
        channel=_to_wire_enum("Channel", header.channel),  # type: ignore[arg-type]
        crime_area=header.crime_area.value,
        purpose=_to_wire_enum("Purpose", header.purpose),  # type: ignore[arg-type]
        priority=_to_wire_enum("Priority", header.priority),  # type: ignore[arg-type]
        classification=_to_wire_enum("Classification", header.classification),  # type: ignore[arg-type]
        handling=pb.Handling(
            codes=sorted(_to_wire_enum("HandlingCode", c) for c in header.handling.codes),  # type: ignore[misc]
            h3=pb.H3Restrictions(
                no_third_party=header.handling.h3.no_third_party,
                only_units=list(header.handling.h3.only_units),
                use_until=header.handling.h3.use_until.isoformat()
                if header.handling.h3.use_until
                else "",
                text=header.handling.h3.text,
            ),
        ),
        subjects=pb.Subjects(
            individuals=[
                pb.DataSubject(
                    category=_to_wire_enum("SubjectCategory", s.category),  # type: ignore[arg-type]
                    minor=s.minor,
                )
                for s in header.subjects.individuals
            ],
            legal_entities=header.subjects.legal_entities,
            special_categories=sorted(
                _to_wire_enum("SpecialCategory", c)  # type: ignore[misc]
                for c in header.subjects.special_categories
            ),
            justification=header.subjects.justification,
        ),
        retention_years=header.retention_years,
    )
    if header.evaluation is not None:
        wire.evaluation.CopyFrom(
            pb.Evaluation(
                source=header.evaluation.source.value,
                information=header.evaluation.information.value,
            )
        )
    return wire


def header_from_wire(wire: pb.Header) -> Header:
    """The domain header a verified wire header states."""
    try:
        crime_area = CrimeArea(wire.crime_area)
        evaluation = (
            Evaluation(
                source=SourceReliability(wire.evaluation.source),
                information=InformationAccuracy(wire.evaluation.information),
            )
            if wire.HasField("evaluation")
            else None
        )
    except ValueError as error:
        raise MalformedEnvelope(f"header field out of vocabulary: {error}") from None
    h3 = wire.handling.h3
    return Header(
        id=wire.id,
        kind=_from_wire_enum("Kind", wire.kind, Kind),
        sender=wire.sender,
        to=tuple(wire.to),
        cc=tuple(wire.cc),
        channel=_from_wire_enum("Channel", wire.channel, Channel),
        crime_area=crime_area,
        purpose=_from_wire_enum("Purpose", wire.purpose, Purpose),
        priority=_from_wire_enum("Priority", wire.priority, Priority),
        case=wire.case_id or None,
        in_reply_to=wire.in_reply_to or None,
        classification=_from_wire_enum("Classification", wire.classification, Classification),
        handling=Handling(
            codes=frozenset(
                _from_wire_enum("HandlingCode", c, HandlingCode) for c in wire.handling.codes
            ),
            h3=H3Restrictions(
                no_third_party=h3.no_third_party,
                only_units=tuple(h3.only_units),
                use_until=_date_or_none(h3.use_until),
                text=h3.text,
            ),
        ),
        evaluation=evaluation,
        subjects=Subjects(
            individuals=tuple(
                DataSubject(
                    category=_from_wire_enum("SubjectCategory", s.category, SubjectCategory),
                    minor=s.minor,
                )
                for s in wire.subjects.individuals
            ),
            legal_entities=wire.subjects.legal_entities,
            special_categories=frozenset(
                _from_wire_enum("SpecialCategory", c, SpecialCategory)
                for c in wire.subjects.special_categories
            ),
            justification=wire.subjects.justification,
        ),
        retention_years=wire.retention_years,
    )


# --------------------------------------------------------------------------- body


def body_to_wire(body: Body) -> pb.Body:
    """The wire body (what is encrypted)."""
    return pb.Body(
        text=body.text,
        persons=[
            pb.Person(
                family_name=p.family_name,
                given_names=p.given_names,
                birth_date=p.birth_date.isoformat() if p.birth_date else "",
                nationality=p.nationality,
                role=_to_wire_enum("SubjectCategory", p.role),  # type: ignore[arg-type]
                minor=p.minor,
            )
            for p in body.persons
        ],
        organisations=[
            pb.Organisation(name=o.name, country=o.country, registration=o.registration)
            for o in body.organisations
        ],
        vehicles=[
            pb.Vehicle(plate=v.plate, country=v.country, vin=v.vin or "") for v in body.vehicles
        ],
        documents=[
            pb.IdentityDocument(kind=d.kind, number=d.number, country=d.country)
            for d in body.documents
        ],
        phones=list(body.phones),
        attachments=[
            pb.Attachment(name=a.name, media_type=a.media_type, content=a.content)
            for a in body.attachments
        ],
    )


def body_from_wire(wire: pb.Body) -> Body:
    """The domain body an opened envelope carries."""
    return Body(
        text=wire.text,
        persons=tuple(
            Person(
                family_name=p.family_name,
                given_names=p.given_names,
                birth_date=_date_or_none(p.birth_date),
                nationality=p.nationality,
                role=_from_wire_enum("SubjectCategory", p.role, SubjectCategory),
                minor=p.minor,
            )
            for p in wire.persons
        ),
        organisations=tuple(
            Organisation(name=o.name, country=o.country, registration=o.registration)
            for o in wire.organisations
        ),
        vehicles=tuple(
            Vehicle(plate=v.plate, country=v.country, vin=v.vin or None) for v in wire.vehicles
        ),
        documents=tuple(
            Document(kind=d.kind, number=d.number, country=d.country) for d in wire.documents
        ),
        phones=tuple(wire.phones),
        attachments=tuple(
            Attachment(name=a.name, media_type=a.media_type, content=a.content)
            for a in wire.attachments
        ),
    )
