"""Load a JSON or YAML document and report problems with file, line and field.

Users write headers, bodies, the registry and profiles by hand; a mistake must be
reported where it is: ``examples/h.json, line 7, field 'subjects.individuals[0].category':
'suspekt' is not one of suspect, contact, ...``. This module is that edge:

* :func:`load_document` / :func:`parse_document` parse a file and return the data
  with a :class:`LineIndex` (field path -> line). For YAML the index comes from the
  composed node tree; for JSON it is computed only when an error needs a line, by a
  small scanner over the already-validated text.
* :class:`Field` is a cursor over the parsed data that knows its path; each typed
  accessor (``string``, ``enum``, ``items``, ...) raises a located
  :class:`~exchange.errors.InputError` (or a subclass, e.g. ``RegistryError``) when
  the value is not what the contract says.

Both formats refuse duplicate keys: the two parsers would silently keep the last
one, and a header whose ``to`` is stated twice is ambiguous, not a typo to forgive.
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from exchange.errors import InputError, Location
from exchange.files import read_input

__all__ = [
    "MISSING",
    "Field",
    "LineIndex",
    "field_path",
    "load_document",
    "parse_document",
    "refuse_duplicates",
    "yaml_node_data",
]

E = TypeVar("E", bound=Enum)
Syntax = Literal["json", "yaml"]


class _Missing:
    """Marker for a key that is absent (distinct from an explicit ``null``)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: the value of a :class:`Field` whose key is absent
MISSING: Any = _Missing()


def field_path(parent: str, key: str | int) -> str:
    """The path of ``key`` under ``parent``: ``a.b``, ``a[0]``, ``key`` at the root."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def _parent_path(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path[: path.rindex(".")] if "." in path else ""


class LineIndex:
    """Field path -> 1-based line where the field is written.

    A path that is not indexed (a missing key, say) resolves to its nearest indexed
    ancestor, so "is required" errors still point at the object that lacks the key.
    """

    def __init__(
        self,
        lines: Mapping[str, int] | None = None,
        *,
        compute: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._lines: Mapping[str, int] | None = lines
        self._compute = compute

    @classmethod
    def empty(cls) -> LineIndex:
        """An index that knows no lines (data that did not come from a file)."""
        return cls({})

    def _table(self) -> Mapping[str, int]:
        if self._lines is None:
            # Computed lazily: a valid JSON file never pays for the scan.
            try:
                self._lines = self._compute() if self._compute else {}
            except (RecursionError, ValueError, IndexError):
                self._lines = {}
        return self._lines

    def line(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest indexed ancestor; None if unknown."""
        table = self._table()
        while True:
            if path in table:
                return table[path]
            if not path:
                return None
            path = _parent_path(path)


# --------------------------------------------------------------------------- loading


def load_document(path: Path, *, what: str = "input") -> tuple[Any, LineIndex]:
    """Read and parse ``path`` (JSON for ``.json``, YAML for ``.yaml``/``.yml``).

    Any other suffix is sniffed: text starting with ``{`` or ``[`` is JSON, the
    rest YAML. Errors are :class:`InputError` naming the file and line.
    """
    raw = read_input(path, what)
    source = str(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise InputError("not UTF-8 text", Location(source, line)) from None
    suffix = path.suffix.lower()
    syntax: Syntax
    if suffix == ".json":
        syntax = "json"
    elif suffix in (".yaml", ".yml"):
        syntax = "yaml"
    else:
        syntax = "json" if text.lstrip()[:1] in ("{", "[") else "yaml"
    return parse_document(text, source, syntax=syntax)


def parse_document(text: str, source: str, *, syntax: Syntax) -> tuple[Any, LineIndex]:
    """Parse ``text`` as ``syntax``; ``source`` names it in errors."""
    if syntax == "json":
        return _parse_json(text, source)
    return _parse_yaml(text, source)


class _DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _parse_json(text: str, source: str) -> tuple[Any, LineIndex]:
    try:
        data = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as error:
        raise InputError(
            f"not valid JSON: {error.msg} (column {error.colno})", Location(source, error.lineno)
        ) from None
    except _DuplicateKey:
        scanner = _JsonLineScanner(text)
        scanner.scan()
        if scanner.duplicate is not None:
            path, line = scanner.duplicate
            raise InputError("this key appears twice", Location(source, line, path)) from None
        raise InputError("a key appears twice in one object", Location(source)) from None
    except RecursionError:
        raise InputError("nested too deeply", Location(source)) from None
    return data, LineIndex(compute=lambda: _JsonLineScanner(text).scan())


class _JsonLineScanner:
    """Maps key paths of *valid* JSON text to lines (json.loads has accepted it already)."""

    _ATOM = re.compile(r"[^,\]\}\s]*")

    def __init__(self, text: str) -> None:
        self.text = text
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.lines: dict[str, int] = {}
        self.duplicate: tuple[str, int] | None = None

    def scan(self) -> dict[str, int]:
        start = self._skip(0)
        self.lines[""] = self._line(start)  # a missing top-level key points here
        self._value(start, "")
        return self.lines

    def _line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def _skip(self, pos: int) -> int:
        text = self.text
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def _value(self, pos: int, path: str) -> int:
        text = self.text
        char = text[pos]
        if char == "{":
            return self._object(pos + 1, path)
        if char == "[":
            return self._array(pos + 1, path)
        if char == '"':
            return int(json.decoder.scanstring(text, pos + 1)[1])  # type: ignore[attr-defined]
        match = self._ATOM.match(text, pos)
        return match.end() if match else pos + 1

    def _object(self, pos: int, path: str) -> int:
        text = self.text
        seen: set[str] = set()
        pos = self._skip(pos)
        if text[pos] == "}":
            return pos + 1
        while True:
            key, end = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
            child = field_path(path, key)
            if key in seen and self.duplicate is None:
                self.duplicate = (child, self._line(pos))
            seen.add(key)
            self.lines.setdefault(child, self._line(pos))
            pos = self._skip(end)
            pos = self._skip(pos + 1)  # the colon
            pos = self._skip(self._value(pos, child))
            if text[pos] == "}":
                return pos + 1
            pos = self._skip(pos + 1)  # the comma

    def _array(self, pos: int, path: str) -> int:
        text = self.text
        pos = self._skip(pos)
        if text[pos] == "]":
            return pos + 1
        index = 0
        while True:
            child = field_path(path, index)
            self.lines[child] = self._line(pos)
            pos = self._skip(self._value(pos, child))
            if text[pos] == "]":
                return pos + 1
            pos = self._skip(pos + 1)
            index += 1


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false.

    YAML 1.1 reads ``no``, ``off``, ``y`` as booleans, so a nationality ``NO``
    (Norway) would silently become ``False``.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _parse_yaml(text: str, source: str) -> tuple[Any, LineIndex]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, LineIndex.empty()
        lines: dict[str, int] = {"": node.start_mark.line + 1}
        duplicate = _index_yaml(node, "", lines, set())
        if duplicate is not None:
            path, line = duplicate
            raise InputError("this key appears twice", Location(source, line, path))
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        reason = f"not valid YAML: {error.problem or error.context or 'syntax error'}"
        if mark is not None:
            reason += f" (column {mark.column + 1})"
        context = error.context_mark
        if error.context and error.problem and context is not None and context is not mark:
            # PyYAML reports where it noticed; the cause is often where the context began.
            reason += f"; {error.context} at line {context.line + 1}"
        raise InputError(reason, Location(source, mark.line + 1 if mark else None)) from None
    except yaml.YAMLError as error:
        raise InputError(f"not valid YAML: {error}", Location(source)) from None
    finally:
        loader.dispose()
    return data, LineIndex(lines)


def _index_yaml(
    node: yaml.Node, path: str, lines: dict[str, int], seen: set[int]
) -> tuple[str, int] | None:
    """Record each field's line; return the first duplicate key (path, line), if any."""
    # Aliases share nodes: visiting each node once keeps "billion laughs" linear.
    if id(node) in seen:
        return None
    seen.add(id(node))
    duplicate: tuple[str, int] | None = None
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key == "<<":  # merge key: its entries belong to this mapping's path
                found = _index_yaml(value_node, path, lines, seen)
                duplicate = duplicate or found
                continue
            child = field_path(path, key)
            line = key_node.start_mark.line + 1
            if key in keys and duplicate is None:
                duplicate = (child, line)
            keys.add(key)
            lines.setdefault(child, line)
            found = _index_yaml(value_node, child, lines, seen)
            duplicate = duplicate or found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = field_path(path, index)
            lines[child] = item.start_mark.line + 1
            found = _index_yaml(item, child, lines, seen)
            duplicate = duplicate or found
    return duplicate


def yaml_node_data(node: yaml.Node, source: str) -> tuple[Any, LineIndex]:
    """The data and line index of an already composed YAML node."""
    lines: dict[str, int] = {"": node.start_mark.line + 1}
    duplicate = _index_yaml(node, "", lines, set())
    if duplicate is not None:
        raise InputError("this key appears twice", Location(source, duplicate[1], duplicate[0]))
    loader = _Loader("")
    try:
        return loader.construct_document(node), LineIndex(lines)
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- fields


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, date):
        return "a date"
    return type(value).__name__


@dataclass(frozen=True)
class Field:
    """One value of a parsed document, with the path and file it came from.

    Accessors check the value against the contract and raise ``error_type``
    located at file, line and field path. ``value`` is :data:`MISSING` when the
    key is absent; an accessor's ``default`` applies to an absent key and to
    ``null`` alike, and without a default the field is required.
    """

    value: Any
    path: str = ""
    source: str = "<input>"
    lines: LineIndex | None = None
    error_type: type[InputError] = InputError

    @classmethod
    def root(
        cls,
        value: Any,
        *,
        source: str,
        lines: LineIndex | None = None,
        error_type: type[InputError] = InputError,
        path: str = "",
    ) -> Field:
        """The cursor at the top of a document (or at ``path`` inside one)."""
        return cls(value, path, source, lines, error_type)

    # ------------------------------------------------------------------ basics

    @property
    def present(self) -> bool:
        """Whether the key exists (an explicit ``null`` is present)."""
        return self.value is not MISSING

    @property
    def is_null(self) -> bool:
        """Absent or ``null``."""
        return self.value is MISSING or self.value is None

    @property
    def location(self) -> Location:
        line = self.lines.line(self.path) if self.lines is not None else None
        return Location(self.source, line, self.path)

    def error(self, reason: str) -> InputError:
        """An error about this field (raise it)."""
        return self.error_type(reason, self.location)

    def child(self, key: str | int) -> Field:
        """The field ``key`` of this object or item ``key`` of this list."""
        value: Any = MISSING
        if isinstance(key, int):
            if isinstance(self.value, list) and 0 <= key < len(self.value):
                value = self.value[key]
        elif isinstance(self.value, Mapping):
            value = self.value.get(key, MISSING)
        return Field(value, field_path(self.path, key), self.source, self.lines, self.error_type)

    __getitem__ = child

    def _require_present(self) -> None:
        if self.value is MISSING:
            raise self.error("is required")

    # ------------------------------------------------------------------ shapes

    def mapping(self, *, required: Collection[str] = (), optional: Collection[str] = ()) -> Field:
        """Check this is an object with every ``required`` key and no key not listed."""
        self._require_present()
        if not isinstance(self.value, Mapping):
            raise self.error(f"must be an object, not {_type_name(self.value)}")
        allowed = [*required, *optional]
        unknown = [str(k) for k in self.value if k not in allowed]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    hints.append(f"{close[0]!r} instead of {key!r}")
            names = ", ".join(repr(k) for k in unknown)
            plural = "s" if len(unknown) > 1 else ""
            reason = f"unknown key{plural} {names}; allowed: {', '.join(allowed)}"
            if hints:
                reason += f" (did you mean {', '.join(hints)}?)"
            raise self.child(unknown[0]).error(reason)
        for key in required:
            if key not in self.value:
                raise self.child(key).error("is required")
        return self

    def items(self, *, required: bool = False) -> list[Field]:
        """The items of this list (an absent or null list is empty unless ``required``)."""
        if self.is_null and not required:
            return []
        self._require_present()
        if not isinstance(self.value, list):
            raise self.error(f"must be a list, not {_type_name(self.value)}")
        return [self.child(i) for i in range(len(self.value))]

    # ------------------------------------------------------------------ scalars

    def string(
        self,
        *,
        default: str | None = None,
        non_empty: bool = False,
        pattern: re.Pattern[str] | None = None,
        expected: str = "",
        max_length: int | None = None,
    ) -> str:
        """A string; ``default`` when absent or null (required when no default)."""
        if self.is_null and default is not None:
            return default
        self._require_present()
        if not isinstance(self.value, str):
            raise self.error(f"must be a string, not {_type_name(self.value)}")
        text: str = self.value
        if non_empty and not text.strip():
            raise self.error("must not be empty")
        if max_length is not None and len(text) > max_length:
            raise self.error(f"is longer than {max_length} characters")
        if pattern is not None and not pattern.fullmatch(text):
            raise self.error(f"{text!r} is not {expected or 'well-formed'}")
        return text

    def optional_string(
        self,
        *,
        pattern: re.Pattern[str] | None = None,
        expected: str = "",
        max_length: int | None = None,
    ) -> str | None:
        """A string or None (absent, ``null``)."""
        if self.is_null:
            return None
        return self.string(pattern=pattern, expected=expected, max_length=max_length)

    def boolean(self, *, default: bool | None = None) -> bool:
        """``true`` or ``false`` (no "yes", no 0/1)."""
        if self.is_null and default is not None:
            return default
        self._require_present()
        if not isinstance(self.value, bool):
            raise self.error(f"must be true or false, not {_type_name(self.value)}")
        return self.value

    def integer(
        self, *, default: int | None = None, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        """A whole number within the bounds."""
        if self.is_null and default is not None:
            return default
        self._require_present()
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.error(f"must be a whole number, not {_type_name(self.value)}")
        number: int = self.value
        if minimum is not None and number < minimum:
            raise self.error(f"must be at least {minimum}, not {number}")
        if maximum is not None and number > maximum:
            raise self.error(f"must be at most {maximum}, not {number}")
        return number

    def enum(self, vocabulary: type[E], *, default: E | None = None, hint: str = "") -> E:
        """A member of ``vocabulary`` by value; the error lists the allowed values."""
        if self.is_null and default is not None:
            return default
        self._require_present()
        value = self.value
        # YAML reads `information: 2` as a number; the vocabulary value is "2".
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        allowed = [str(m.value) for m in vocabulary]
        if not isinstance(value, str) or value not in allowed:
            shown = repr(value) if isinstance(value, str) else _type_name(value)
            reason = f"{shown} is not one of {', '.join(allowed)}"
            raise self.error(reason + (f"; {hint}" if hint else ""))
        return vocabulary(value)

    def enum_set(self, vocabulary: type[E]) -> frozenset[E]:
        """A list of members of ``vocabulary`` (absent or null: empty)."""
        return frozenset(item.enum(vocabulary) for item in self.items())

    def date(self) -> date | None:
        """An ISO date (``YYYY-MM-DD``) or None when absent or ``null``."""
        if self.is_null:
            return None
        value = self.value
        if isinstance(value, datetime):
            raise self.error("must be a date (YYYY-MM-DD), not a date and time")
        if isinstance(value, date):  # YAML reads unquoted dates itself
            return value
        if not isinstance(value, str):
            raise self.error(f"must be a date (YYYY-MM-DD), not {_type_name(value)}")
        # fromisoformat alone would also take "20200101" and week dates.
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise self.error(f"{value!r} is not a date (YYYY-MM-DD)")


def refuse_duplicates(items: Iterable[tuple[Field, str]], what: str) -> None:
    """Raise at the second occurrence of a value among ``(field, value)`` pairs."""
    first: dict[str, Field] = {}
    for item, value in items:
        if value in first:
            raise item.error(f"{value} is listed twice in {what}")
        first[value] = item
