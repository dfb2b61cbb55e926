"""The message header: the outer, cleartext part of a message that the hub decides on.

Frozen dataclasses mirror the JSON contract of DESIGN.md section 8 field for field.
:meth:`Header.from_json` parses that JSON once, at the edge, and refuses anything
the contract does not allow with an :class:`~exchange.errors.InputError` naming
file, line and field path (``subjects.individuals[1].category``). Downstream code
(policy, envelope, log) reads typed fields and never re-checks raw dicts.

Structural rules live here (well-formed ids, closed vocabularies, H0 present,
REPLY names its request, evaluation codes whenever individuals are declared).
Rules that depend on the registry or on the law (who may receive what, whether a
justification is good enough) are policy rules with stable ids, in ``policy.py``.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from exchange.core.jsonfile import Field, LineIndex, load_document, refuse_duplicates
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
    SpecialCategory,
    SubjectCategory,
)

E = TypeVar("E", bound=Enum)

__all__ = [
    "DEFAULT_RETENTION_YEARS",
    "MESSAGE_ID",
    "DataSubject",
    "Evaluation",
    "H3Restrictions",
    "Handling",
    "Header",
    "Subjects",
    "load_header_file",
]

#: message and case ids: printable, no spaces, at most 128 characters (UUIDs fit)
MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MESSAGE_ID_FORMAT = "an id (letters, digits and . _ : -, at most 128 characters)"
#: the hub reviews stored data no later than 3 years after arrival (DESIGN.md section 1)
DEFAULT_RETENTION_YEARS = 3
_MAX_RETENTION_YEARS = 3
#: free text in the cleartext header stays short: the content belongs in the body
_MAX_HEADER_TEXT = 2000

_HEADER_REQUIRED = (
    "kind",
    "sender",
    "to",
    "channel",
    "crime_area",
    "purpose",
    "classification",
    "handling",
    "subjects",
)
_HEADER_OPTIONAL = ("id", "cc", "priority", "case", "in_reply_to", "evaluation", "retention_years")


def _ordered(members: Iterable[E], vocabulary: type[E]) -> list[E]:
    """Set members in vocabulary order, so the JSON form is deterministic."""
    order = list(vocabulary)
    return sorted(members, key=order.index)


@dataclass(frozen=True)
class H3Restrictions:
    """The provider's own restrictions under H3: structured where possible, text besides."""

    no_third_party: bool = False
    only_units: tuple[str, ...] = ()
    use_until: date | None = None
    text: str = ""

    @property
    def is_empty(self) -> bool:
        """Whether no restriction is stated."""
        return not (self.no_third_party or self.only_units or self.use_until or self.text)

    def to_json(self) -> dict[str, Any]:
        return {
            "no_third_party": self.no_third_party,
            "only_units": list(self.only_units),
            "use_until": self.use_until.isoformat() if self.use_until else None,
            "text": self.text,
        }


@dataclass(frozen=True)
class Handling:
    """Handling codes (H0 always among them) and the H3 restrictions."""

    codes: frozenset[HandlingCode]
    h3: H3Restrictions = field(default_factory=H3Restrictions)

    def to_json(self) -> dict[str, Any]:
        return {
            "codes": [c.value for c in _ordered(self.codes, HandlingCode)],
            "h3": self.h3.to_json(),
        }


@dataclass(frozen=True)
class Evaluation:
    """4x4 evaluation: reliability of the source and accuracy of the information."""

    source: SourceReliability
    information: InformationAccuracy

    @property
    def code(self) -> str:
        """The two-character code, e.g. ``B2``."""
        return f"{self.source.value}{self.information.value}"

    def to_json(self) -> dict[str, str]:
        return {"source": self.source.value, "information": self.information.value}


@dataclass(frozen=True)
class DataSubject:
    """One natural person the body concerns, declared without naming them."""

    category: SubjectCategory
    minor: bool

    def to_json(self) -> dict[str, Any]:
        return {"category": self.category.value, "minor": self.minor}


@dataclass(frozen=True)
class Subjects:
    """The data-subject declaration: who the body concerns, in counts and categories."""

    individuals: tuple[DataSubject, ...] = ()
    legal_entities: int = 0
    special_categories: frozenset[SpecialCategory] = frozenset()
    justification: str = ""

    @property
    def has_personal_data(self) -> bool:
        """Whether the message concerns any natural person."""
        return bool(self.individuals) or bool(self.special_categories)

    @property
    def minors(self) -> int:
        """How many declared individuals are minors."""
        return sum(1 for s in self.individuals if s.minor)

    @property
    def needs_justification(self) -> bool:
        """Victims, witnesses, minors and special categories travel only where strictly
        necessary, so the sender must state why (DESIGN.md section 1)."""
        return bool(self.special_categories) or any(
            s.minor or s.category.needs_justification for s in self.individuals
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "individuals": [s.to_json() for s in self.individuals],
            "legal_entities": self.legal_entities,
            "special_categories": [
                c.value for c in _ordered(self.special_categories, SpecialCategory)
            ],
            "justification": self.justification,
        }


@dataclass(frozen=True)
class Header:
    """The outer header of a message (DESIGN.md sections 3 and 8)."""

    id: str
    kind: Kind
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    channel: Channel
    crime_area: CrimeArea
    purpose: Purpose
    priority: Priority
    case: str | None
    in_reply_to: str | None
    classification: Classification
    handling: Handling
    evaluation: Evaluation | None
    subjects: Subjects
    retention_years: int = DEFAULT_RETENTION_YEARS

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every recipient, ``to`` then ``cc``, each once."""
        return tuple(dict.fromkeys((*self.to, *self.cc)))

    def with_id(self, new_id: str) -> Header:
        """This header with another message id."""
        return dataclasses.replace(self, id=new_id)

    def with_recipients(self, to: tuple[str, ...], cc: tuple[str, ...] = ()) -> Header:
        """This header addressed to other recipients (a forward, say)."""
        return dataclasses.replace(self, to=to, cc=cc)

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """The JSON contract shape (plus ``retention_years``); ``from_json`` reads it back."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "sender": self.sender,
            "to": list(self.to),
            "cc": list(self.cc),
            "channel": self.channel.value,
            "crime_area": self.crime_area.value,
            "purpose": self.purpose.value,
            "priority": self.priority.value,
            "case": self.case,
            "in_reply_to": self.in_reply_to,
            "classification": self.classification.value,
            "handling": self.handling.to_json(),
            "evaluation": self.evaluation.to_json() if self.evaluation else None,
            "subjects": self.subjects.to_json(),
            "retention_years": self.retention_years,
        }

    @classmethod
    def from_json(
        cls,
        obj: Mapping[str, Any],
        *,
        source: str = "<header>",
        new_id: Callable[[], str] | None = None,
        lines: LineIndex | None = None,
    ) -> Header:
        """Parse and check a header in the JSON contract shape.

        ``id`` is generated when absent or null (``new_id``, by default a UUID4).
        ``cc``, ``priority`` (``normal``), ``case``, ``in_reply_to``, ``evaluation``
        and ``retention_years`` (3) may be absent; everything else is required,
        including ``subjects.individuals`` and ``subjects.legal_entities``, and
        ``minor`` for each individual: a data-protection declaration is never
        assumed. Unknown keys are refused. ``lines`` (from :func:`load_document`)
        adds line numbers to errors.
        """
        root = Field.root(obj, source=source, lines=lines)
        root.mapping(required=_HEADER_REQUIRED, optional=_HEADER_OPTIONAL)

        id_field = root["id"]
        if id_field.is_null:
            message_id = new_id() if new_id is not None else str(uuid.uuid4())
        else:
            message_id = _message_id(id_field)
        kind = root["kind"].enum(Kind)
        sender = _unit(root["sender"])
        to_items = root["to"].items(required=True)
        if not to_items:
            raise root["to"].error("a message needs at least one recipient in 'to'")
        cc_items = root["cc"].items()
        to = tuple(_unit(item) for item in to_items)
        cc = tuple(_unit(item) for item in cc_items)
        addressed = list(zip(to_items + cc_items, to + cc, strict=True))
        refuse_duplicates(addressed, "the recipients (to and cc)")
        for item, unit in addressed:
            if unit == sender:
                raise item.error(f"the sender {sender} cannot also be a recipient")

        in_reply_to = _optional_message_id(root["in_reply_to"])
        if kind is Kind.REPLY and in_reply_to is None:
            raise root["in_reply_to"].error("a REPLY must name the request it answers")
        if kind in (Kind.REQUEST, Kind.INFORMATION) and in_reply_to is not None:
            raise root["in_reply_to"].error(
                f"only a REPLY answers a message; a {kind.value} has in_reply_to null"
            )
        if in_reply_to is not None and in_reply_to == message_id:
            raise root["in_reply_to"].error("a message cannot reply to itself")

        subjects = _subjects(root["subjects"])
        evaluation = _evaluation(root["evaluation"])
        if evaluation is None and subjects.individuals:
            raise root["evaluation"].error(
                "evaluation codes (source and information) are required when the message "
                "declares individuals"
            )

        return cls(
            id=message_id,
            kind=kind,
            sender=sender,
            to=to,
            cc=cc,
            channel=root["channel"].enum(Channel),
            crime_area=root["crime_area"].enum(
                CrimeArea, hint="crime outside the agency's mandate is refused"
            ),
            purpose=root["purpose"].enum(Purpose),
            priority=root["priority"].enum(Priority, default=Priority.NORMAL),
            case=_optional_message_id(root["case"]),
            in_reply_to=in_reply_to,
            classification=root["classification"].enum(
                Classification,
                hint="the exchange is accredited up to CONFIDENTIEL_UE; higher is refused",
            ),
            handling=_handling(root["handling"]),
            evaluation=evaluation,
            subjects=subjects,
            retention_years=root["retention_years"].integer(
                default=DEFAULT_RETENTION_YEARS, minimum=1, maximum=_MAX_RETENTION_YEARS
            ),
        )


# --------------------------------------------------------------------------- parsing


def _unit(item: Field) -> str:
    return item.string(pattern=UNIT_ID, expected=UNIT_ID_FORMAT)


def _message_id(item: Field) -> str:
    return item.string(pattern=MESSAGE_ID, expected=_MESSAGE_ID_FORMAT)


def _optional_message_id(item: Field) -> str | None:
    return item.optional_string(pattern=MESSAGE_ID, expected=_MESSAGE_ID_FORMAT)


def _handling(node: Field) -> Handling:
    node.mapping(required=("codes",), optional=("h3",))
    codes = node["codes"].enum_set(HandlingCode)
    if HandlingCode.H0 not in codes:
        raise node["codes"].error(
            "H0 is always present: information may only be used to prevent and combat "
            "crime within the mandate"
        )
    h3 = _h3(node["h3"])
    if HandlingCode.H3 in codes and h3.is_empty:
        raise node["h3"].error("H3 is set, so state the restriction (structured or as text)")
    if HandlingCode.H3 not in codes and not h3.is_empty:
        raise node["codes"].error("H3 restrictions are stated, so H3 must be among the codes")
    return Handling(codes=codes, h3=h3)


def _h3(node: Field) -> H3Restrictions:
    if node.is_null:
        return H3Restrictions()
    node.mapping(optional=("no_third_party", "only_units", "use_until", "text"))
    unit_items = node["only_units"].items()
    only_units = tuple(_unit(item) for item in unit_items)
    refuse_duplicates(zip(unit_items, only_units, strict=True), "only_units")
    return H3Restrictions(
        no_third_party=node["no_third_party"].boolean(default=False),
        only_units=only_units,
        use_until=node["use_until"].date(),
        text=node["text"].string(default="", max_length=_MAX_HEADER_TEXT),
    )


def _evaluation(node: Field) -> Evaluation | None:
    if node.is_null:
        return None
    node.mapping(required=("source", "information"))
    return Evaluation(
        source=node["source"].enum(SourceReliability),
        information=node["information"].enum(InformationAccuracy),
    )


def _subjects(node: Field) -> Subjects:
    node.mapping(
        required=("individuals", "legal_entities"),
        optional=("special_categories", "justification"),
    )
    individuals = []
    for item in node["individuals"].items(required=True):
        item.mapping(required=("category", "minor"))
        individuals.append(
            DataSubject(
                category=item["category"].enum(SubjectCategory), minor=item["minor"].boolean()
            )
        )
    special = node["special_categories"].enum_set(SpecialCategory)
    if special and not individuals:
        raise node["special_categories"].error(
            "special categories concern natural persons; declare the individuals concerned"
        )
    return Subjects(
        individuals=tuple(individuals),
        legal_entities=node["legal_entities"].integer(minimum=0),
        special_categories=special,
        justification=node["justification"].string(default="", max_length=_MAX_HEADER_TEXT),
    )


def load_header_file(path: Path) -> Header:
    """Read a header from a JSON or YAML file; errors name file, line and field."""
    data, lines = load_document(path, what="header")
    return Header.from_json(data, source=str(path), lines=lines)
