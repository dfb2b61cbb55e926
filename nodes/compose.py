"""Headers from command-line flags, replies, and the node's own notices.

``exchange send`` takes either a header file (the JSON contract of DESIGN.md section 8)
or flags. With flags and a body file, the data-subject declaration is derived from the
body (persons and organisations), so it cannot disagree with what is sent; a text-only
message declares no one. Everything here is pure: no files, no clock, no network.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from exchange.core.body import Body
from exchange.core.header import (
    MESSAGE_ID,
    DataSubject,
    Evaluation,
    H3Restrictions,
    Handling,
    Header,
    Subjects,
)
from exchange.core.registry import UNIT_ID, UNIT_ID_FORMAT
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
)
from exchange.errors import InputError, Location

__all__ = [
    "HeaderFlags",
    "header_from_flags",
    "mismatch_notice",
    "new_message_id",
    "reply_header",
]

E = TypeVar("E", bound=Enum)


def new_message_id() -> str:
    """A fresh message id (UUID4)."""
    return str(uuid.uuid4())


def _flag(name: str) -> Location:
    return Location(f"--{name}")


def _choice(vocabulary: type[E], value: str, name: str, hint: str = "") -> E:
    allowed = [str(m.value) for m in vocabulary]
    if value not in allowed:
        # forgive the case of enum-ish words (REQUEST, request; h2, H2)
        folded = {a.lower(): a for a in allowed}
        if value.lower() in folded:
            return vocabulary(folded[value.lower()])
        reason = f"{value!r} is not one of {', '.join(allowed)}"
        raise InputError(reason + (f"; {hint}" if hint else ""), _flag(name))
    return vocabulary(value)


def check_unit(value: str, name: str) -> str:
    """A well-formed unit id from flag ``--name``, or an :class:`InputError`."""
    if not UNIT_ID.fullmatch(value):
        raise InputError(f"{value!r} is not {UNIT_ID_FORMAT}", _flag(name))
    return value


def check_message_id(value: str, name: str) -> str:
    """A well-formed message id from flag ``--name``."""
    if not MESSAGE_ID.fullmatch(value):
        raise InputError(
            f"{value!r} is not a message id (letters, digits and . _ : -, at most 128)",
            _flag(name),
        )
    return value


def parse_codes(text: str) -> frozenset[HandlingCode]:
    """``H0,H2`` -> handling codes; H0 is always added (it always applies)."""
    codes = {HandlingCode.H0}
    for part in (p.strip() for p in text.split(",")):
        if part:
            codes.add(_choice(HandlingCode, part.upper(), "codes"))
    return frozenset(codes)


def parse_evaluation(text: str) -> Evaluation:
    """``B2`` -> source reliability B, information accuracy 2."""
    value = text.strip().upper()
    if len(value) != 2:
        raise InputError(
            f"{text!r} is not an evaluation code: a reliability (A, B, C, X) and an accuracy "
            "(1-4), e.g. B2",
            _flag("evaluation"),
        )
    return Evaluation(
        source=_choice(SourceReliability, value[0], "evaluation"),
        information=_choice(InformationAccuracy, value[1], "evaluation"),
    )


def subjects_of(body: Body, justification: str = "") -> Subjects:
    """The declaration that matches ``body``: one individual per person, one entity per
    organisation (special categories cannot be read off a body: use a header file)."""
    return Subjects(
        individuals=tuple(DataSubject(category=p.role, minor=p.minor) for p in body.persons),
        legal_entities=len(body.organisations),
        justification=justification,
    )


@dataclass(frozen=True)
class HeaderFlags:
    """The header flags of ``exchange send``, as typed (checked by :func:`header_from_flags`)."""

    to: Sequence[str]
    cc: Sequence[str] = ()
    channel: str = "SIENA"
    crime_area: str | None = None
    kind: str = "INFORMATION"
    codes: str = "H0"
    h3_text: str = ""
    priority: str = "normal"
    purpose: str = "information_exchange"
    classification: str = "RESTREINT_UE"
    case: str | None = None
    evaluation: str | None = None
    justification: str = ""
    message_id: str | None = None


def header_from_flags(
    sender: str,
    flags: HeaderFlags,
    body: Body,
    *,
    new_id: Callable[[], str] = new_message_id,
) -> Header:
    """A header for ``body`` from the flags; errors name the flag and why."""
    if not flags.to:
        raise InputError("a message needs at least one recipient", _flag("to"))
    to = tuple(check_unit(u, "to") for u in flags.to)
    cc = tuple(check_unit(u, "cc") for u in flags.cc)
    seen: set[str] = set()
    for unit in (*to, *cc):
        if unit in seen:
            raise InputError(f"{unit} is named twice among the recipients", _flag("to"))
        if unit == sender:
            raise InputError(f"the sender {sender} cannot also be a recipient", _flag("to"))
        seen.add(unit)
    if flags.crime_area is None:
        raise InputError(
            "is required without --header (e.g. terrorism, drug_trafficking)", _flag("crime-area")
        )
    kind = _choice(Kind, flags.kind.upper(), "kind")
    if kind is Kind.REPLY:
        raise InputError("use `exchange reply MSGID` to answer a message", _flag("kind"))
    codes = parse_codes(flags.codes)
    h3 = H3Restrictions(text=flags.h3_text)
    if HandlingCode.H3 in codes and not flags.h3_text:
        raise InputError("H3 is set, so state the restriction with --h3-text", _flag("codes"))
    if flags.h3_text and HandlingCode.H3 not in codes:
        codes = codes | {HandlingCode.H3}
    subjects = subjects_of(body, flags.justification)
    evaluation = parse_evaluation(flags.evaluation) if flags.evaluation else None
    if subjects.individuals and evaluation is None:
        raise InputError(
            "the body names persons, so evaluation codes are required (e.g. --evaluation B2)",
            _flag("evaluation"),
        )
    return Header(
        id=check_message_id(flags.message_id, "id") if flags.message_id else new_id(),
        kind=kind,
        sender=sender,
        to=to,
        cc=cc,
        channel=_choice(Channel, flags.channel.upper(), "channel"),
        crime_area=_choice(
            CrimeArea, flags.crime_area, "crime-area", "crime outside the mandate is refused"
        ),
        purpose=_choice(Purpose, flags.purpose, "purpose"),
        priority=_choice(Priority, flags.priority, "priority"),
        case=check_message_id(flags.case, "case") if flags.case else None,
        in_reply_to=None,
        classification=_choice(
            Classification,
            flags.classification.upper(),
            "classification",
            "the exchange is accredited up to CONFIDENTIEL_UE",
        ),
        handling=Handling(codes=codes, h3=h3),
        evaluation=evaluation,
        subjects=subjects,
    )


def reply_header(
    original: Header,
    sender: str,
    body: Body,
    *,
    codes: str = "H0",
    classification: str | None = None,
    evaluation: str | None = None,
    new_id: Callable[[], str] = new_message_id,
) -> Header:
    """A REPLY to ``original`` from ``sender``: to its sender, same case, channel, crime
    area and purpose; classified as the original unless told otherwise."""
    if original.sender == sender:
        raise InputError(f"message {original.id} was sent by {sender} itself; nothing to answer")
    subjects = subjects_of(body)
    parsed_evaluation = parse_evaluation(evaluation) if evaluation else None
    if subjects.individuals and parsed_evaluation is None:
        raise InputError(
            "the body names persons, so evaluation codes are required (e.g. --evaluation B2)",
            _flag("evaluation"),
        )
    return Header(
        id=new_id(),
        kind=Kind.REPLY,
        sender=sender,
        to=(original.sender,),
        cc=(),
        channel=original.channel,
        crime_area=original.crime_area,
        purpose=original.purpose,
        priority=original.priority,
        case=original.case,
        in_reply_to=original.id,
        classification=_choice(Classification, classification.upper(), "classification")
        if classification
        else original.classification,
        handling=Handling(codes=parse_codes(codes)),
        evaluation=parsed_evaluation,
        subjects=subjects,
    )


def mismatch_notice(
    original: Header, unit: str, reason: str, *, new_id: Callable[[], str] = new_message_id
) -> tuple[Header, Body]:
    """The signed notice a recipient sends back when a body disagrees with its header.

    A NOTICE from ``unit`` to the message's sender, on the same channel and crime area,
    declaring no one; the text names the message and the check, never body content.
    """
    header = Header(
        id=new_id(),
        kind=Kind.NOTICE,
        sender=unit,
        to=(original.sender,),
        cc=(),
        channel=original.channel,
        crime_area=original.crime_area,
        purpose=Purpose.INFORMATION_EXCHANGE,
        priority=Priority.NORMAL,
        case=original.case,
        in_reply_to=None,
        classification=Classification.UNCLASSIFIED,
        handling=Handling(codes=frozenset({HandlingCode.H0})),
        evaluation=None,
        subjects=Subjects(),
    )
    return header, Body(text=f"header/body mismatch in {original.id}: {reason}")
