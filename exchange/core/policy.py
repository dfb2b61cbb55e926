"""The hub's policy decision: small rules with stable ids, composed, failing closed.

Each rule is an object with an ``id`` and ``evaluate(header, context) ->
list[Violation]``; a :class:`RuleSet` runs them all and refuses the message when
any rule names a violation, or when a rule itself fails (fail closed: a rule that
raises becomes a ``POLICY-RULE-FAILED`` violation, never a silent pass).

The decision reads the outer header only; the hub never needs the body key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from exchange.core.header import Header
from exchange.core.jsonfile import load_document
from exchange.core.registry import Registry, load_registry
from exchange.core.suites import SUITES, Suite
from exchange.core.vocab import Channel, Classification
from exchange.errors import InputError, Location

#: the default size limit: a 50 MB body plus the envelope's own overhead
DEFAULT_MAX_ENVELOPE_BYTES = 50 * 1024 * 1024 + 1024 * 1024


@dataclass(frozen=True)
class Violation:
    """One reason to refuse: stable rule id, message, recipient concerned, a sentence."""

    rule: str
    message_id: str
    recipient: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "message_id": self.message_id,
            "recipient": self.recipient,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class CryptoPolicy:
    """Minimum suites: overall, per classification and per channel (the strictest applies)."""

    minimum: Suite = SUITES["classic-2026"]
    by_classification: Mapping[Classification, Suite] = field(default_factory=dict)
    by_channel: Mapping[Channel, Suite] = field(default_factory=dict)

    def minimum_for(self, header: Header) -> Suite:
        candidates = [self.minimum]
        if header.classification in self.by_classification:
            candidates.append(self.by_classification[header.classification])
        if header.channel in self.by_channel:
            candidates.append(self.by_channel[header.channel])
        return max(candidates, key=lambda s: s.strength)


@dataclass(frozen=True)
class PolicyContext:
    """What a rule may look at beside the header: plain data, time passed in."""

    registry: Registry
    now: datetime
    envelope_bytes: int = 0
    suite: Suite | None = None
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    crypto: CryptoPolicy = field(default_factory=CryptoPolicy)


class Rule(Protocol):
    """A policy rule: a stable id and a pure evaluation."""

    @property
    def id(self) -> str: ...

    def evaluate(self, header: Header, context: PolicyContext) -> list[Violation]: ...


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RefuseUnknownUnit:
    """Every party to a message must be in the registry."""

    id: str = "REG-UNKNOWN-UNIT"

    def evaluate(self, header: Header, context: PolicyContext) -> list[Violation]:
        out = []
        for unit in (header.sender, *header.recipients):
            if unit not in context.registry:
                role = "sender" if unit == header.sender else "recipient"
                out.append(
                    Violation(
                        self.id,
                        header.id,
                        unit,
                        f"{unit} is not a unit of the exchange; the message has an unknown {role}.",
                    )
                )
        return out


@dataclass(frozen=True)
class RefuseNonMemberOfChannel:
    """A message travels on one channel; every party must belong to it."""

    id: str = "CH-NOT-MEMBER"

    def evaluate(self, header: Header, context: PolicyContext) -> list[Violation]:
        out = []
        for unit_id in (header.sender, *header.recipients):
            unit = context.registry.get(unit_id)
            if unit is not None and header.channel not in unit.channels:
                channels = ", ".join(sorted(c.value for c in unit.channels)) or "none"
                out.append(
                    Violation(
                        self.id,
                        header.id,
                        unit_id,
                        f"{unit_id} is not a member of the {header.channel.value} channel "
                        f"(its channels: {channels}).",
                    )
                )
        return out


@dataclass(frozen=True)
class RefuseOversizedEnvelope:
    """Envelopes above the configured size are refused before anything is stored."""

    id: str = "SZ-TOO-LARGE"

    def evaluate(self, header: Header, context: PolicyContext) -> list[Violation]:
        if context.envelope_bytes <= context.max_envelope_bytes:
            return []
        return [
            Violation(
                self.id,
                header.id,
                "",
                f"The message is {context.envelope_bytes:,} bytes; the limit is "
                f"{context.max_envelope_bytes:,} bytes.",
            )
        ]


@dataclass(frozen=True)
class RefuseWeakSuite:
    """The envelope's suite must meet the minimum for its classification and channel."""

    id: str = "CR-SUITE-TOO-WEAK"

    def evaluate(self, header: Header, context: PolicyContext) -> list[Violation]:
        if context.suite is None:
            return []
        minimum = context.crypto.minimum_for(header)
        if context.suite.strength >= minimum.strength:
            return []
        return [
            Violation(
                self.id,
                header.id,
                "",
                f"A {header.classification.value} message on {header.channel.value} must be "
                f"sealed with {minimum.id} or stronger; it was sealed with {context.suite.id}.",
            )
        ]


@dataclass(frozen=True)
class RuleSet:
    """All rules, run in order; any violation refuses; a failing rule refuses too."""

    rules: Sequence[Rule]

    def evaluate(self, header: Header, context: PolicyContext) -> list[Violation]:
        out: list[Violation] = []
        for rule in self.rules:
            try:
                out.extend(rule.evaluate(header, context))
            except Exception as error:  # fail closed, and say which rule broke
                out.append(
                    Violation(
                        "POLICY-RULE-FAILED",
                        header.id,
                        "",
                        f"Rule {rule.id} could not be evaluated ({type(error).__name__}); "
                        f"the message is refused rather than let through unchecked.",
                    )
                )
        return out

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rules]


def default_rules() -> RuleSet:
    """The rules the hub runs."""
    return RuleSet(
        [
            RefuseUnknownUnit(),
            RefuseNonMemberOfChannel(),
            RefuseOversizedEnvelope(),
            RefuseWeakSuite(),
        ]
    )


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Policy:
    """Everything the hub decides with: registry, rules, limits, crypto minimums."""

    registry: Registry
    rules: RuleSet
    max_envelope_bytes: int
    crypto: CryptoPolicy
    #: SHA-256 over the policy files, named in log entries and evidences
    hash: str

    def decide(
        self,
        header: Header,
        *,
        now: datetime,
        envelope_bytes: int = 0,
        suite: Suite | None = None,
    ) -> list[Violation]:
        """The violations for ``header`` (empty: accepted)."""
        context = PolicyContext(
            registry=self.registry,
            now=now,
            envelope_bytes=envelope_bytes,
            suite=suite,
            max_envelope_bytes=self.max_envelope_bytes,
            crypto=self.crypto,
        )
        return self.rules.evaluate(header, context)


def _suite_at(value: Any, location: Location) -> Suite:
    if not isinstance(value, str) or value not in SUITES:
        raise InputError(f"{value!r} is not a suite; known: {', '.join(SUITES)}", location)
    return SUITES[value]


def parse_crypto(data: Any, source: str) -> CryptoPolicy:
    """The ``crypto:`` section of policy.yaml."""
    if data is None:
        return CryptoPolicy()
    if not isinstance(data, Mapping):
        raise InputError("must be a mapping", Location(source, None, "crypto"))
    unknown = set(data) - {"minimum_suite", "by_classification", "by_channel"}
    if unknown:
        raise InputError(f"unknown keys {sorted(unknown)}", Location(source, None, "crypto"))
    by_classification: dict[Classification, Suite] = {}
    for name, suite in (data.get("by_classification") or {}).items():
        where = Location(source, None, f"crypto.by_classification.{name}")
        if name not in Classification.values():
            raise InputError(
                f"{name!r} is not a classification ({', '.join(Classification.values())})", where
            )
        by_classification[Classification(name)] = _suite_at(suite, where)
    by_channel: dict[Channel, Suite] = {}
    for name, suite in (data.get("by_channel") or {}).items():
        where = Location(source, None, f"crypto.by_channel.{name}")
        if name not in Channel.values():
            raise InputError(f"{name!r} is not a channel ({', '.join(Channel.values())})", where)
        by_channel[Channel(name)] = _suite_at(suite, where)
    minimum = _suite_at(
        data.get("minimum_suite", "classic-2026"), Location(source, None, "crypto.minimum_suite")
    )
    return CryptoPolicy(minimum, by_classification, by_channel)


def load_policy(folder: Path, *, registry: Registry | None = None) -> Policy:
    """Load ``folder``/registry.yaml and ``folder``/policy.yaml into a :class:`Policy`."""
    registry_path = folder / "registry.yaml"
    policy_path = folder / "policy.yaml"
    loaded_registry = registry or load_registry(registry_path)
    digest = hashlib.sha256()
    for path in (registry_path, policy_path):
        if path.exists():
            digest.update(path.name.encode() + b"\x00" + path.read_bytes())
    data: Any = {}
    if policy_path.exists():
        data, _lines = load_document(policy_path)
        data = data or {}
        if not isinstance(data, Mapping):
            raise InputError("the policy file must be a mapping", Location(str(policy_path)))
    limits = data.get("limits") or {}
    max_bytes = limits.get("max_envelope_bytes", DEFAULT_MAX_ENVELOPE_BYTES)
    if not isinstance(max_bytes, int) or max_bytes <= 0:
        raise InputError(
            "must be a positive number of bytes",
            Location(str(policy_path), None, "limits.max_envelope_bytes"),
        )
    return Policy(
        registry=loaded_registry,
        rules=default_rules(),
        max_envelope_bytes=max_bytes,
        crypto=parse_crypto(data.get("crypto"), str(policy_path)),
        hash=digest.hexdigest(),
    )
