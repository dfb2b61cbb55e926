"""The message body: what travels only inside the encryption.

Frozen dataclasses mirror the body JSON of DESIGN.md section 8. :meth:`Body.from_json`
parses it once, reading attachments from files, and refuses anything malformed with
an :class:`~exchange.errors.InputError` naming file, line and field.
:func:`check_body_against_header` is what a recipient runs after opening: the body
must agree with the data subjects the (signed, cleartext) header declared, since the
hub decided on that declaration without seeing the body.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from exchange.core.header import Subjects
from exchange.core.jsonfile import Field, LineIndex, load_document
from exchange.core.vocab import SubjectCategory
from exchange.files import PRIVATE, write_atomic

__all__ = [
    "MAX_BODY_BYTES",
    "Attachment",
    "Body",
    "Document",
    "Organisation",
    "Person",
    "Vehicle",
    "check_body_against_header",
    "load_body_file",
    "safe_file_name",
]

#: the largest body the exchange carries: text (UTF-8) plus attachments
MAX_BODY_BYTES = 50 * 1024 * 1024

_COUNTRY = re.compile(r"[A-Z]{2}")
_COUNTRY_FORMAT = "a two-letter country code (e.g. AL), or empty"
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*")
_PHONE = re.compile(r"\+?[0-9][0-9 ()./-]{2,39}")
_MAX_SHORT = 500


@dataclass(frozen=True)
class Person:
    """A natural person named in the body."""

    family_name: str
    given_names: str
    birth_date: date | None
    nationality: str
    role: SubjectCategory
    minor: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "family_name": self.family_name,
            "given_names": self.given_names,
            "birth_date": self.birth_date.isoformat() if self.birth_date else None,
            "nationality": self.nationality,
            "role": self.role.value,
            "minor": self.minor,
        }


@dataclass(frozen=True)
class Organisation:
    """A legal entity named in the body."""

    name: str
    country: str
    registration: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "country": self.country, "registration": self.registration}


@dataclass(frozen=True)
class Vehicle:
    """A vehicle: plate, registration country, VIN when known."""

    plate: str
    country: str
    vin: str | None

    def to_json(self) -> dict[str, Any]:
        return {"plate": self.plate, "country": self.country, "vin": self.vin}


@dataclass(frozen=True)
class Document:
    """An identity or travel document (``kind`` e.g. passport, id_card)."""

    kind: str
    number: str
    country: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "number": self.number, "country": self.country}


@dataclass(frozen=True)
class Attachment:
    """A file carried in the body. ``content`` is left out of ``repr`` (it may be large)."""

    name: str
    media_type: str
    content: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What is shown without the content: name, media type, size, SHA-256."""
        return {
            "name": self.name,
            "media_type": self.media_type,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Body:
    """The encrypted content of a message (DESIGN.md section 8)."""

    text: str = ""
    persons: tuple[Person, ...] = ()
    organisations: tuple[Organisation, ...] = ()
    vehicles: tuple[Vehicle, ...] = ()
    documents: tuple[Document, ...] = ()
    phones: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()

    @property
    def size(self) -> int:
        """Bytes counted against :data:`MAX_BODY_BYTES`: UTF-8 text plus attachments."""
        return len(self.text.encode("utf-8")) + sum(a.size for a in self.attachments)

    def to_json(self, attachments_dir: Path | None = None) -> dict[str, Any]:
        """The body JSON shape.

        With ``attachments_dir``, each attachment is written there (atomically, mode
        0600: bodies are sensitive) under a safe file name and referenced by that
        relative ``path``, so ``Body.from_json(..., base_dir=attachments_dir)`` reads
        the body back. Without it, attachments are summarised (name, media type,
        size, SHA-256) and their content left out.
        """
        if attachments_dir is None:
            attachments = [a.summary() for a in self.attachments]
        else:
            attachments = []
            taken: set[str] = set()
            for attachment in self.attachments:
                file_name = safe_file_name(attachment.name, taken)
                taken.add(file_name.lower())
                write_atomic(attachments_dir / file_name, attachment.content, mode=PRIVATE)
                attachments.append(
                    {
                        "name": attachment.name,
                        "media_type": attachment.media_type,
                        "path": file_name,
                    }
                )
        return {
            "text": self.text,
            "persons": [p.to_json() for p in self.persons],
            "organisations": [o.to_json() for o in self.organisations],
            "vehicles": [v.to_json() for v in self.vehicles],
            "documents": [d.to_json() for d in self.documents],
            "phones": list(self.phones),
            "attachments": attachments,
        }

    @classmethod
    def from_json(
        cls,
        obj: Mapping[str, Any],
        *,
        base_dir: Path,
        source: str = "<body>",
        lines: LineIndex | None = None,
    ) -> Body:
        """Parse a body and read its attachments (``path`` relative to ``base_dir``,
        or absolute). Every list may be empty or absent. The body, text plus
        attachments, may not exceed :data:`MAX_BODY_BYTES`."""
        root = Field.root(obj, source=source, lines=lines)
        root.mapping(
            optional=(
                "text",
                "persons",
                "organisations",
                "vehicles",
                "documents",
                "phones",
                "attachments",
            )
        )
        text = root["text"].string(default="")
        total = len(text.encode("utf-8"))
        if total > MAX_BODY_BYTES:
            raise root["text"].error(
                f"the text is {total:,} bytes; a body may not exceed {_limit_text()}"
            )
        attachments: list[Attachment] = []
        names: dict[str, Field] = {}
        for item in root["attachments"].items():
            attachment = _attachment(item, base_dir, budget=MAX_BODY_BYTES - total)
            key = attachment.name.lower()
            if key in names:
                raise item["name"].error(
                    f"two attachments are named {attachment.name!r}; each needs its own name"
                )
            names[key] = item
            total += attachment.size
            attachments.append(attachment)
        return cls(
            text=text,
            persons=tuple(_person(item) for item in root["persons"].items()),
            organisations=tuple(_organisation(item) for item in root["organisations"].items()),
            vehicles=tuple(_vehicle(item) for item in root["vehicles"].items()),
            documents=tuple(_document(item) for item in root["documents"].items()),
            phones=tuple(
                item.string(pattern=_PHONE, expected="a phone number (digits, +, spaces)")
                for item in root["phones"].items()
            ),
            attachments=tuple(attachments),
        )


# --------------------------------------------------------------------------- parsing


def _limit_text() -> str:
    return f"{MAX_BODY_BYTES // (1024 * 1024)} MB ({MAX_BODY_BYTES:,} bytes)"


def _country(item: Field) -> str:
    if item.is_null:
        return ""
    text = item.string()
    if text and not _COUNTRY.fullmatch(text):
        raise item.error(f"{text!r} is not {_COUNTRY_FORMAT}")
    return text


def _person(item: Field) -> Person:
    item.mapping(
        required=("family_name", "role"),
        optional=("given_names", "birth_date", "nationality", "minor"),
    )
    return Person(
        family_name=item["family_name"].string(non_empty=True, max_length=_MAX_SHORT),
        given_names=item["given_names"].string(default="", max_length=_MAX_SHORT),
        birth_date=item["birth_date"].date(),
        nationality=_country(item["nationality"]),
        role=item["role"].enum(SubjectCategory),
        minor=item["minor"].boolean(default=False),
    )


def _organisation(item: Field) -> Organisation:
    item.mapping(required=("name",), optional=("country", "registration"))
    return Organisation(
        name=item["name"].string(non_empty=True, max_length=_MAX_SHORT),
        country=_country(item["country"]),
        registration=item["registration"].optional_string(max_length=_MAX_SHORT) or "",
    )


def _vehicle(item: Field) -> Vehicle:
    item.mapping(required=("plate",), optional=("country", "vin"))
    return Vehicle(
        plate=item["plate"].string(non_empty=True, max_length=_MAX_SHORT),
        country=_country(item["country"]),
        vin=item["vin"].optional_string(max_length=_MAX_SHORT) or None,
    )


def _document(item: Field) -> Document:
    item.mapping(required=("kind", "number"), optional=("country",))
    return Document(
        kind=item["kind"].string(non_empty=True, max_length=_MAX_SHORT),
        number=item["number"].string(non_empty=True, max_length=_MAX_SHORT),
        country=_country(item["country"]),
    )


def _attachment(item: Field, base_dir: Path, *, budget: int) -> Attachment:
    item.mapping(required=("path",), optional=("name", "media_type"))
    path_text = item["path"].string(non_empty=True)
    path = Path(path_text)
    resolved = path if path.is_absolute() else base_dir / path
    name = item["name"].string(default=path.name, non_empty=True, max_length=255)
    if not _is_plain_file_name(name):
        raise item["name"].error(
            f"{name!r} is not a plain file name (no folders, no control characters)"
        )
    guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
    media_type = item["media_type"].string(
        default=guessed, pattern=_MEDIA_TYPE, expected="a media type (e.g. image/jpeg)"
    )
    where = item["path"]
    try:
        if not resolved.is_file():
            if resolved.exists():
                raise where.error(f"{resolved} is not a file")
            raise where.error(f"no such file: {resolved}")
        # Check the size before reading, so a huge file is refused without loading it.
        size = resolved.stat().st_size
        if size > budget:
            raise where.error(
                f"{resolved} is {size:,} bytes; with it the body would exceed {_limit_text()}"
            )
        content = resolved.read_bytes()
    except OSError as error:
        raise where.error(f"cannot read {resolved} ({error.strerror})") from None
    if len(content) > budget:  # the file grew between stat and read
        raise where.error(f"{resolved}: with it the body would exceed {_limit_text()}")
    return Attachment(name=name, media_type=media_type, content=content)


def _is_plain_file_name(name: str) -> bool:
    if name in (".", "..") or "/" in name or "\\" in name:
        return False
    return not any(unicodedata.category(c).startswith("C") for c in name)


def safe_file_name(name: str, taken: Iterable[str] = ()) -> str:
    """A file name for an attachment that stays inside the folder it is written to.

    Attachment names come from the sender; a received ``../../.bashrc`` must not
    escape the recipient's folder. Folders and control characters are dropped, a
    leading dot is removed (no hidden files), and a name already ``taken``
    (case-insensitively) gets a ``-2``, ``-3``... suffix.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if not unicodedata.category(c).startswith("C"))
    base = base.strip().lstrip(".").strip()[:200] or "attachment"
    taken_lower = {t.lower() for t in taken}
    if base.lower() not in taken_lower:
        return base
    stem, dot, suffix = base.rpartition(".")
    if not dot or not stem:
        stem, suffix = base, ""
    counter = 2
    while True:
        candidate = f"{stem}-{counter}" + (f".{suffix}" if suffix else "")
        if candidate.lower() not in taken_lower:
            return candidate
        counter += 1


def load_body_file(path: Path) -> Body:
    """Read a body from a JSON or YAML file; attachment paths are relative to its folder."""
    data, lines = load_document(path, what="body")
    return Body.from_json(data, base_dir=path.parent, source=str(path), lines=lines)


# --------------------------------------------------------------------------- checks


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else (plural or singular + 's')}"


def check_body_against_header(body: Body, subjects: Subjects) -> list[str]:
    """What disagrees between the body and the header's data-subject declaration.

    Compares the persons with the declared individuals (how many, the categories
    and the minors, and which categories the minors are in) and the organisations
    with the declared legal entities. Returns one sentence per disagreement; an
    empty list when they agree.
    """
    problems: list[str] = []
    declared = len(subjects.individuals)
    named = len(body.persons)
    if declared != named:
        problems.append(
            f"the header declares {_count(declared, 'individual')}, "
            f"the body names {_count(named, 'person')}"
        )
    declared_categories = Counter(s.category for s in subjects.individuals)
    named_categories = Counter(p.role for p in body.persons)
    if declared != named or declared_categories != named_categories:
        for category in SubjectCategory:
            d, n = declared_categories[category], named_categories[category]
            if d != n:
                problems.append(f"the header declares {d} {category.value}, the body names {n}")
    declared_minors = subjects.minors
    named_minors = sum(1 for p in body.persons if p.minor)
    if declared_minors != named_minors:
        problems.append(
            f"the header declares {_count(declared_minors, 'minor')}, the body names {named_minors}"
        )
    elif declared_categories == named_categories:
        declared_pairs = Counter((s.category, s.minor) for s in subjects.individuals)
        named_pairs = Counter((p.role, p.minor) for p in body.persons)
        if declared_pairs != named_pairs:
            problems.append("the minors are declared in other categories than the body gives them")
    declared_entities = subjects.legal_entities
    named_entities = len(body.organisations)
    if declared_entities != named_entities:
        problems.append(
            f"the header declares {_count(declared_entities, 'legal entity', 'legal entities')}, "
            f"the body names {_count(named_entities, 'organisation')}"
        )
    return problems
