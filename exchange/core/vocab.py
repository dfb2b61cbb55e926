"""Closed vocabularies of the exchange: one enum each, values as in the JSON contract.

A reader finds every code the system knows here: handling codes, classifications,
partner statuses, channels, kinds, priorities, purposes, crime areas, data-subject
categories and evaluation codes.
"""

from __future__ import annotations

from enum import StrEnum


class _Vocabulary(StrEnum):
    """A closed set whose members serialise as their value."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class PartnerStatus(_Vocabulary):
    """What the law lets a unit receive (DESIGN.md section 1)."""

    MEMBER_STATE = "member_state"
    AGENCY = "agency"
    OPERATIONAL = "operational"
    STRATEGIC = "strategic"
    RELAYED = "relayed"

    @property
    def may_receive_personal_data(self) -> bool:
        return self in (PartnerStatus.MEMBER_STATE, PartnerStatus.AGENCY, PartnerStatus.OPERATIONAL)

    @property
    def may_receive_special_categories(self) -> bool:
        return self in (PartnerStatus.MEMBER_STATE, PartnerStatus.AGENCY)


class Channel(_Vocabulary):
    """Community a message travels on."""

    SIENA = "SIENA"
    CT = "CT"
    ARO = "ARO"


class Classification(_Vocabulary):
    """Security classification; the exchange is accredited up to CONFIDENTIEL_UE."""

    UNCLASSIFIED = "UNCLASSIFIED"
    RESTREINT_UE = "RESTREINT_UE"
    CONFIDENTIEL_UE = "CONFIDENTIEL_UE"

    @property
    def rank(self) -> int:
        return _CLASSIFICATION_RANK[self]

    def allows(self, level: Classification) -> bool:
        """Whether a clearance of this level may receive ``level``."""
        return self.rank >= level.rank


_CLASSIFICATION_RANK = {
    Classification.UNCLASSIFIED: 0,
    Classification.RESTREINT_UE: 1,
    Classification.CONFIDENTIEL_UE: 2,
}


class HandlingCode(_Vocabulary):
    """Handling codes set by the provider, binding downstream."""

    H0 = "H0"  # only for preventing and combating crime within the mandate
    H1 = "H1"  # not to be disclosed in judicial proceedings without permission
    H2 = "H2"  # not to be disseminated without the provider's permission
    H3 = "H3"  # other restrictions, stated by the provider


class Kind(_Vocabulary):
    """Message kind."""

    REQUEST = "REQUEST"
    REPLY = "REPLY"
    INFORMATION = "INFORMATION"
    NOTICE = "NOTICE"  # the system's own notices (mismatch reports and the like)


class Priority(_Vocabulary):
    """Priority of a request; decides when its reply is due."""

    NORMAL = "normal"
    URGENT = "urgent"
    URGENT_DIRECT = "urgent_direct"

    @property
    def reply_due_hours(self) -> int:
        """Hours within which a reply is due (EU directive 2023/977)."""
        return {Priority.URGENT_DIRECT: 8, Priority.URGENT: 72, Priority.NORMAL: 168}[self]


class Purpose(_Vocabulary):
    """Why the provider sends a message."""

    CROSS_CHECKING = "cross_checking"
    OPERATIONAL_ANALYSIS = "operational_analysis"
    STRATEGIC_ANALYSIS = "strategic_analysis"
    INFORMATION_EXCHANGE = "information_exchange"


class CrimeArea(_Vocabulary):
    """Crime areas within the agency's mandate. Anything else is refused."""

    TERRORISM = "terrorism"
    DRUG_TRAFFICKING = "drug_trafficking"
    MIGRANT_SMUGGLING = "migrant_smuggling"
    TRAFFICKING_IN_HUMAN_BEINGS = "trafficking_in_human_beings"
    MONEY_LAUNDERING = "money_laundering"
    FIREARMS_TRAFFICKING = "firearms_trafficking"
    CYBERCRIME = "cybercrime"
    CORRUPTION = "corruption"
    ORGANISED_PROPERTY_CRIME = "organised_property_crime"
    CHILD_SEXUAL_EXPLOITATION = "child_sexual_exploitation"
    MURDER_AND_GRIEVOUS_BODILY_INJURY = "murder_and_grievous_bodily_injury"
    KIDNAPPING_AND_HOSTAGE_TAKING = "kidnapping_and_hostage_taking"
    ARMED_ROBBERY = "armed_robbery"
    FRAUD_AND_SWINDLING = "fraud_and_swindling"
    COUNTERFEITING = "counterfeiting"
    FORGERY_OF_DOCUMENTS = "forgery_of_documents"
    ENVIRONMENTAL_CRIME = "environmental_crime"
    RACKETEERING_AND_EXTORTION = "racketeering_and_extortion"
    TAX_CRIME = "tax_crime"
    SANCTIONS_VIOLATION = "sanctions_violation"
    WAR_CRIMES_AND_GENOCIDE = "war_crimes_and_genocide"


class SubjectCategory(_Vocabulary):
    """Role of a natural person in the matter."""

    SUSPECT = "suspect"
    CONTACT = "contact"
    VICTIM = "victim"
    WITNESS = "witness"
    INFORMANT = "informant"
    OTHER = "other"

    @property
    def needs_justification(self) -> bool:
        """Victims and witnesses travel only where strictly necessary."""
        return self in (SubjectCategory.VICTIM, SubjectCategory.WITNESS)


class SpecialCategory(_Vocabulary):
    """Special categories of personal data (GDPR art. 9 / Europol Regulation art. 30)."""

    RACIAL_OR_ETHNIC_ORIGIN = "racial_or_ethnic_origin"
    POLITICAL_OPINIONS = "political_opinions"
    RELIGIOUS_BELIEFS = "religious_beliefs"
    TRADE_UNION_MEMBERSHIP = "trade_union_membership"
    GENETIC = "genetic"
    BIOMETRIC = "biometric"
    HEALTH = "health"
    SEX_LIFE = "sex_life"


class SourceReliability(_Vocabulary):
    """4x4 evaluation: reliability of the source."""

    A = "A"  # no doubt
    B = "B"  # mostly reliable
    C = "C"  # mostly unreliable
    X = "X"  # cannot be assessed


class InformationAccuracy(_Vocabulary):
    """4x4 evaluation: accuracy of the information."""

    KNOWN_TO_SOURCE = "1"  # not in doubt
    KNOWN_PERSONALLY_TO_SOURCE = "2"  # known personally to the source, not to the official
    CORROBORATED = "3"  # not known personally to the source, corroborated
    UNCORROBORATED = "4"  # not known personally to the source, cannot be corroborated
