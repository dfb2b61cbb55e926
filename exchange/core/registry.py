"""The unit registry: who is connected, with what status, on which channels, cleared how far.

The registry is data (``policies/registry.yaml``, DESIGN.md section 8), parsed once
at the edge into frozen :class:`Unit` objects; policy rules only ever read a
:class:`Registry`. A :class:`Registry` checks its own invariants on construction
(ids match, relays exist and have direct access), so an inconsistent one cannot
exist as an object. Errors in the file name file, line, field and why, as
:class:`~exchange.errors.RegistryError`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from exchange.core.jsonfile import Field, LineIndex, load_document, yaml_node_data
from exchange.core.vocab import Channel, Classification, PartnerStatus
from exchange.errors import InputError, Location, RegistryError

__all__ = [
    "UNIT_ID",
    "UNIT_ID_FORMAT",
    "Registry",
    "Unit",
    "is_unit_id",
    "load_registry",
    "parse_units",
]

#: a unit id: country or organisation code, dot, unit (``AL.CTD``, ``EU.EUROPOL``)
UNIT_ID = re.compile(r"[A-Z]{2}\.[A-Z0-9]{2,12}")
#: how a unit id is described in error messages
UNIT_ID_FORMAT = "a unit id (country or organisation code, dot, unit: e.g. AL.CTD)"

_UNIT_KEYS_REQUIRED = ("id", "name", "status", "channels", "clearance")
_UNIT_KEYS_OPTIONAL = ("relay",)
_MAX_NAME = 200


def is_unit_id(text: object) -> bool:
    """Whether ``text`` is a well-formed unit id."""
    return isinstance(text, str) and UNIT_ID.fullmatch(text) is not None


def _channel_order(channels: Iterable[Channel]) -> list[Channel]:
    order = list(Channel)
    return sorted(channels, key=order.index)


@dataclass(frozen=True)
class Unit:
    """A connected authority.

    ``relay`` names the unit that sends and receives on this unit's behalf; it is
    set exactly when ``status`` is ``relayed``. ``source`` says where the unit was
    defined (file and line), for diagnostics only; it takes no part in equality.
    """

    id: str
    name: str
    status: PartnerStatus
    channels: frozenset[Channel]
    clearance: Classification
    relay: str | None
    source: str = field(default="", compare=False)

    @property
    def country(self) -> str:
        """The country or organisation code (``AL`` for ``AL.CTD``)."""
        return self.id.split(".", 1)[0]

    def to_json(self) -> dict[str, Any]:
        """The registry-file shape of this unit (DESIGN.md section 8)."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status.value,
            "channels": [c.value for c in _channel_order(self.channels)],
            "clearance": self.clearance.value,
            "relay": self.relay,
        }


def _relay_problem(unit: Unit, lookup: Mapping[str, Unit]) -> str | None:
    """Why ``unit``'s relay is wrong, or None when it is right."""
    if unit.status is PartnerStatus.RELAYED:
        if unit.relay is None:
            return (
                f"{unit.id} has status relayed, so it needs a relay: the unit that sends "
                "and receives on its behalf"
            )
    elif unit.relay is not None:
        return (
            f"only a unit with status relayed has a relay; {unit.id} is {unit.status.value} "
            "(set relay: null, or status: relayed)"
        )
    if unit.relay is None:
        return None
    relay = lookup.get(unit.relay)
    if relay is None:
        return f"relay {unit.relay} is not a unit of the registry"
    if relay.status is PartnerStatus.RELAYED:
        return (
            f"relay {relay.id} is itself relayed (via {relay.relay}); a relay must have "
            "direct access"
        )
    # The relay carries every message of the unit, so it must be on the same channels
    # and cleared at least as high.
    missing = unit.channels - relay.channels
    if missing:
        names = ", ".join(c.value for c in _channel_order(missing))
        return f"relay {relay.id} does not belong to channel {names}, which {unit.id} is on"
    if not relay.clearance.allows(unit.clearance):
        return (
            f"relay {relay.id} is cleared up to {relay.clearance.value} only, below "
            f"{unit.id}'s clearance {unit.clearance.value}"
        )
    return None


@dataclass(frozen=True)
class Registry:
    """The units of the exchange, by id; iterates over units sorted by id."""

    units: Mapping[str, Unit]

    def __post_init__(self) -> None:
        for key, unit in self.units.items():
            if key != unit.id:
                raise RegistryError(
                    f"unit {unit.id} is registered under the id {key}",
                    Location(unit.source or "<registry>", None, "id"),
                )
        for unit in self.units.values():
            problem = _relay_problem(unit, self.units)
            if problem:
                raise RegistryError(problem, Location(unit.source or "<registry>", None, "relay"))
        # Read-only and sorted, so iteration order never depends on the file's order.
        frozen = MappingProxyType(dict(sorted(self.units.items())))
        object.__setattr__(self, "units", frozen)

    def __hash__(self) -> int:
        return hash(tuple(self.units.values()))

    def __contains__(self, unit_id: object) -> bool:
        return unit_id in self.units

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units.values())

    def __len__(self) -> int:
        return len(self.units)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every unit id, sorted."""
        return tuple(self.units)

    def get(self, unit_id: str) -> Unit | None:
        """The unit ``unit_id``, or None."""
        return self.units.get(unit_id)

    def require(self, unit_id: str) -> Unit:
        """The unit ``unit_id``; a :class:`RegistryError` naming it when unknown."""
        unit = self.units.get(unit_id)
        if unit is None:
            close = difflib.get_close_matches(unit_id, list(self.units), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise RegistryError(f"{unit_id} is not a unit of the registry{hint}")
        return unit

    def relayed_by(self, relay_id: str) -> list[Unit]:
        """The units whose messages ``relay_id`` carries, sorted by id."""
        return [u for u in self if u.relay == relay_id]

    def with_units(self, extra: Iterable[Unit]) -> Registry:
        """This registry plus ``extra`` (a simulation profile's units); duplicates refused."""
        units = dict(self.units)
        for unit in extra:
            existing = units.get(unit.id)
            if existing is not None:
                where = f" ({existing.source})" if existing.source else ""
                raise RegistryError(
                    f"unit {unit.id} is already in the registry{where}",
                    Location(unit.source or "<units>", None, "id"),
                )
            units[unit.id] = unit
        return Registry(units)

    def to_json(self) -> dict[str, Any]:
        """The registry-file shape: ``{"units": [...]}``, sorted by id."""
        return {"units": [u.to_json() for u in self]}


# --------------------------------------------------------------------------- parsing


def parse_units(
    units: Any,
    source: str,
    *,
    lines: LineIndex | None = None,
    path: str = "units",
    base: Registry | None = None,
) -> list[Unit]:
    """Parse a list of registry entries (the registry's or a profile's ``units``).

    ``units`` is the parsed list (with ``lines`` and the ``path`` at which it sits in
    its document, for line numbers), or a composed YAML node. Relays may name units
    of ``base`` (the reference registry a profile extends) or of the list itself;
    an id already in ``base`` or listed twice is refused. ``null`` is an empty list.
    """
    if isinstance(units, yaml.Node):
        units, lines = yaml_node_data(units, source)
        path = ""
    known: dict[str, Unit] = dict(base.units) if base is not None else {}
    root = Field.root(units, source=source, lines=lines, error_type=RegistryError, path=path)
    parsed: list[tuple[Field, Unit]] = []
    first_seen: dict[str, Field] = {}
    for item in root.items():
        unit = _parse_unit(item)
        id_field = item["id"]
        if unit.id in known:
            where = known[unit.id].source or "the reference registry"
            raise id_field.error(f"unit {unit.id} is already defined ({where})")
        if unit.id in first_seen:
            line = first_seen[unit.id].location.line
            where = f" (first at line {line})" if line is not None else ""
            raise id_field.error(f"unit {unit.id} is defined twice{where}")
        first_seen[unit.id] = id_field
        parsed.append((item, unit))
    lookup = {**known, **{unit.id: unit for _, unit in parsed}}
    for item, unit in parsed:
        problem = _relay_problem(unit, lookup)
        if problem:
            raise item["relay"].error(problem)
    return [unit for _, unit in parsed]


def _parse_unit(item: Field) -> Unit:
    item.mapping(required=_UNIT_KEYS_REQUIRED, optional=_UNIT_KEYS_OPTIONAL)
    unit_id = item["id"].string(pattern=UNIT_ID, expected=UNIT_ID_FORMAT)
    name = item["name"].string(non_empty=True, max_length=_MAX_NAME)
    status = item["status"].enum(PartnerStatus)
    channel_items = item["channels"].items(required=True)
    if not channel_items:
        raise item["channels"].error("a unit belongs to at least one channel")
    channels = frozenset(c.enum(Channel) for c in channel_items)
    clearance = item["clearance"].enum(
        Classification, hint="the exchange is accredited up to CONFIDENTIEL_UE"
    )
    relay = item["relay"].optional_string(pattern=UNIT_ID, expected=UNIT_ID_FORMAT)
    return Unit(
        id=unit_id,
        name=name.strip(),
        status=status,
        channels=channels,
        clearance=clearance,
        relay=relay,
        source=str(Location(item.source, item.location.line)),
    )


def load_registry(path: Path) -> Registry:
    """Load and check a registry file (DESIGN.md section 8); errors are RegistryError."""
    source = str(path)
    try:
        data, lines = load_document(path, what="registry")
    except RegistryError:
        raise
    except InputError as error:  # syntax errors and unreadable files: same family
        raise RegistryError(error.reason, error.location) from None
    root = Field.root(data, source=source, lines=lines, error_type=RegistryError)
    if data is None:
        raise root.error("the registry is empty; it needs a 'units' list")
    root.mapping(required=("units",))
    units = parse_units(data["units"], source, lines=lines, path="units")
    if not units:
        raise root["units"].error("the registry lists no units")
    return Registry({u.id: u for u in units})
