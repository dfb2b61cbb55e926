"""The unit registry: the reference file, and every bad file named by file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from exchange.core.registry import (
    Registry,
    Unit,
    is_unit_id,
    load_registry,
    parse_units,
)
from exchange.core.vocab import Channel, Classification, PartnerStatus
from exchange.errors import InputError, RegistryError

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "policies" / "registry.yaml"

REQUIRED_UNITS = {
    "AL.ENU",
    "AL.CTD",
    "RS.CTU",
    "ME.ARO",
    "BA.DKPT",
    "MK.CTS",
    "XK.KP",
    "EU.EULEX",
    "AT.ENU",
    "AT.ARO",
    "DE.ENU",
    "DE.ARO",
    "EU.EUROPOL",
}


@pytest.fixture(scope="module")
def reference() -> Registry:
    return load_registry(REFERENCE)


def unit(
    unit_id: str,
    status: PartnerStatus = PartnerStatus.OPERATIONAL,
    channels: tuple[Channel, ...] = (Channel.SIENA,),
    clearance: Classification = Classification.RESTREINT_UE,
    relay: str | None = None,
) -> Unit:
    return Unit(unit_id, f"Unit {unit_id}", status, frozenset(channels), clearance, relay)


# --------------------------------------------------------------------------- reference


def test_reference_registry_has_every_required_unit(reference: Registry) -> None:
    assert set(reference.ids) >= REQUIRED_UNITS


def test_kosovo_police_is_relayed_via_eulex(reference: Registry) -> None:
    kosovo = reference.require("XK.KP")
    assert kosovo.status is PartnerStatus.RELAYED
    assert kosovo.relay == "EU.EULEX"
    assert reference.relayed_by("EU.EULEX") == [kosovo]
    assert reference.require("EU.EULEX").relay is None


def test_reference_statuses_follow_the_seed_facts(reference: Registry) -> None:
    for western_balkans in ("AL.ENU", "AL.CTD", "RS.CTU", "ME.ARO", "BA.DKPT", "MK.CTS"):
        assert reference.require(western_balkans).status is PartnerStatus.OPERATIONAL
    for member_state in ("AT.ENU", "AT.ARO", "DE.ENU", "DE.ARO"):
        assert reference.require(member_state).status is PartnerStatus.MEMBER_STATE
    europol = reference.require("EU.EUROPOL")
    assert europol.status is PartnerStatus.AGENCY
    assert europol.channels == frozenset(Channel)
    assert europol.clearance is Classification.CONFIDENTIEL_UE
    assert any(u.status is PartnerStatus.STRATEGIC for u in reference)


def test_bosnia_is_not_on_ct_siena(reference: Registry) -> None:
    # CT SIENA was not yet established in Bosnia and Herzegovina in 2020.
    assert Channel.CT not in reference.require("BA.DKPT").channels


def test_counter_terrorism_units_are_on_ct_and_aros_on_aro(reference: Registry) -> None:
    for ct_unit in ("AL.CTD", "RS.CTU", "MK.CTS", "AT.ENU", "DE.ENU"):
        assert Channel.CT in reference.require(ct_unit).channels
    for aro in ("ME.ARO", "AT.ARO", "DE.ARO"):
        assert Channel.ARO in reference.require(aro).channels


def test_registry_iterates_sorted_and_round_trips_through_json(reference: Registry) -> None:
    assert [u.id for u in reference] == sorted(reference.ids)
    again = parse_units(reference.to_json()["units"], "<json>")
    assert Registry({u.id: u for u in again}) == reference


def test_unit_sources_name_file_and_line(reference: Registry) -> None:
    assert reference.require("AL.CTD").source.startswith(f"{REFERENCE}, line ")


# --------------------------------------------------------------------------- bad files

GOOD_ENTRY = """\
  - id: AL.CTD
    name: Counter-Terrorism Directorate
    status: operational
    channels: [SIENA, CT]
    clearance: RESTREINT_UE
    relay: null
"""

# Each case: registry text with the offending line marked "#<", the field path, and
# a fragment of the reason.
BAD_FILES = {
    "bad_status": (
        "units:\n"
        "  - id: AL.CTD\n"
        "    name: Counter-Terrorism Directorate\n"
        "    status: operationl  #<\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n",
        "units[0].status",
        "'operationl' is not one of member_state, agency, operational, strategic, relayed",
    ),
    "unknown_relay": (
        "units:\n" + GOOD_ENTRY + "  - id: XK.KP\n"
        "    name: Kosovo Police\n"
        "    status: relayed\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n"
        "    relay: EU.EULEKS  #<\n",
        "units[1].relay",
        "relay EU.EULEKS is not a unit of the registry",
    ),
    "relay_missing_for_relayed_unit": (
        "units:\n"
        "  - id: XK.KP  #<\n"
        "    name: Kosovo Police\n"
        "    status: relayed\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n",
        "units[0].relay",
        "needs a relay",
    ),
    "relay_on_unit_that_is_not_relayed": (
        "units:\n" + GOOD_ENTRY + "  - id: RS.CTU\n"
        "    name: Service for Combating Terrorism\n"
        "    status: operational\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n"
        "    relay: AL.CTD  #<\n",
        "units[1].relay",
        "only a unit with status relayed has a relay",
    ),
    "relay_that_is_itself_relayed": (
        "units:\n"
        "  - id: XK.KP\n"
        "    name: Kosovo Police\n"
        "    status: relayed\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n"
        "    relay: XK.KPX  #<\n"
        "  - id: XK.KPX\n"
        "    name: Another relayed unit\n"
        "    status: relayed\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n"
        "    relay: XK.KP\n",
        "units[0].relay",
        "is itself relayed",
    ),
    "relay_not_on_the_channel": (
        "units:\n" + GOOD_ENTRY + "  - id: XK.KP\n"
        "    name: Kosovo Police\n"
        "    status: relayed\n"
        "    channels: [ARO]\n"
        "    clearance: RESTREINT_UE\n"
        "    relay: AL.CTD  #<\n",
        "units[1].relay",
        "relay AL.CTD does not belong to channel ARO",
    ),
    "relay_cleared_lower": (
        "units:\n" + GOOD_ENTRY + "  - id: XK.KP\n"
        "    name: Kosovo Police\n"
        "    status: relayed\n"
        "    channels: [SIENA]\n"
        "    clearance: CONFIDENTIEL_UE\n"
        "    relay: AL.CTD  #<\n",
        "units[1].relay",
        "cleared up to RESTREINT_UE only",
    ),
    "duplicate_id": (
        "units:\n" + GOOD_ENTRY + "  - id: AL.CTD  #<\n"
        "    name: Again\n"
        "    status: operational\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n",
        "units[1].id",
        "unit AL.CTD is defined twice (first at line 2)",
    ),
    "unknown_key": (
        "units:\n"
        "  - id: AL.CTD\n"
        "    name: Counter-Terrorism Directorate\n"
        "    status: operational\n"
        "    chanels: [SIENA]  #<\n"
        "    clearance: RESTREINT_UE\n",
        "units[0].chanels",
        "unknown key 'chanels'",
    ),
    "malformed_id": (
        "units:\n"
        "  - id: al-ctd  #<\n"
        "    name: Counter-Terrorism Directorate\n"
        "    status: operational\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n",
        "units[0].id",
        "'al-ctd' is not a unit id",
    ),
    "missing_key": (
        "units:\n"
        "  - id: AL.CTD  #<\n"
        "    name: Counter-Terrorism Directorate\n"
        "    status: operational\n"
        "    channels: [SIENA]\n",
        "units[0].clearance",
        "is required",
    ),
    "bad_channel": (
        "units:\n"
        "  - id: AL.CTD\n"
        "    name: Counter-Terrorism Directorate\n"
        "    status: operational\n"
        "    channels: [SIENA, CTS]  #<\n"
        "    clearance: RESTREINT_UE\n",
        "units[0].channels[1]",
        "'CTS' is not one of SIENA, CT, ARO",
    ),
    "no_channel": (
        "units:\n"
        "  - id: AL.CTD\n"
        "    name: Counter-Terrorism Directorate\n"
        "    status: operational\n"
        "    channels: []  #<\n"
        "    clearance: RESTREINT_UE\n",
        "units[0].channels",
        "at least one channel",
    ),
    "clearance_above_accreditation": (
        "units:\n"
        "  - id: AL.CTD\n"
        "    name: Counter-Terrorism Directorate\n"
        "    status: operational\n"
        "    channels: [SIENA]\n"
        "    clearance: SECRET_UE  #<\n",
        "units[0].clearance",
        "the exchange is accredited up to CONFIDENTIEL_UE",
    ),
    "empty_name": (
        "units:\n"
        "  - id: AL.CTD\n"
        "    name: ''  #<\n"
        "    status: operational\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n",
        "units[0].name",
        "must not be empty",
    ),
    "duplicate_key": (
        "units:\n"
        "  - id: AL.CTD\n"
        "    name: Counter-Terrorism Directorate\n"
        "    status: operational\n"
        "    status: strategic  #<\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n",
        "units[0].status",
        "appears twice",
    ),
    "yaml_syntax_error": (
        "units:\n"
        "  - id: AL.CTD\n"
        "    name: Counter-Terrorism Directorate\n"
        "    status: operational\n"
        "    channels: [SIENA\n"
        "    clearance: RESTREINT_UE  #<\n",
        "",
        "not valid YAML",
    ),
    "no_units_key": ("unit:  #<\n" + GOOD_ENTRY, "unit", "unknown key 'unit'"),
    "empty_units": ("units: []  #<\n", "units", "lists no units"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_registry_file_names_file_line_and_field(tmp_path: Path, case: str) -> None:
    text, field, reason = BAD_FILES[case]
    path = tmp_path / "registry.yaml"
    path.write_text(text, encoding="utf-8")
    expected_line = next(i for i, line in enumerate(text.splitlines(), 1) if "#<" in line)
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    error = caught.value
    assert error.location.source == str(path)
    assert error.location.line == expected_line
    assert error.location.field == field
    assert reason in error.reason
    assert str(error).startswith(f"{path}, line {expected_line}")


def test_registry_error_reads_as_file_line_field_reason(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(BAD_FILES["bad_status"][0], encoding="utf-8")
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert str(caught.value) == (
        f"{path}, line 4, field 'units[0].status': 'operationl' is not one of "
        "member_state, agency, operational, strategic, relayed"
    )


def test_missing_registry_file_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no such registry file"):
        load_registry(tmp_path / "absent.yaml")


def test_empty_registry_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(RegistryError, match="needs a 'units' list"):
        load_registry(path)


def test_registry_errors_are_input_errors_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(BAD_FILES["malformed_id"][0], encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_registry(path)
    assert caught.value.exit_code == 2


def test_registry_in_json_is_read_too(tmp_path: Path, reference: Registry) -> None:
    import json

    path = tmp_path / "registry.json"
    path.write_text(json.dumps(reference.to_json(), indent=2), encoding="utf-8")
    assert load_registry(path) == reference


# --------------------------------------------------------------------------- API


def test_require_names_the_unknown_unit(reference: Registry) -> None:
    with pytest.raises(RegistryError, match=r"AL\.CTX is not a unit .*did you mean AL\.CTD"):
        reference.require("AL.CTX")
    assert reference.get("AL.CTX") is None
    assert "AL.CTX" not in reference
    assert "AL.CTD" in reference


def test_with_units_adds_profile_units(reference: Registry) -> None:
    extended = reference.with_units([unit("RS.ENU")])
    assert "RS.ENU" in extended
    assert len(extended) == len(reference) + 1
    assert "RS.ENU" not in reference  # the original is unchanged


def test_with_units_refuses_a_duplicate(reference: Registry) -> None:
    with pytest.raises(RegistryError, match=r"AL\.CTD is already in the registry"):
        reference.with_units([unit("AL.CTD")])


def test_with_units_checks_relays(reference: Registry) -> None:
    relayed = unit("XK.NEW", PartnerStatus.RELAYED, relay="EU.EULEX")
    assert reference.with_units([relayed]).relayed_by("EU.EULEX")[-1] == relayed
    with pytest.raises(RegistryError, match=r"relay XK\.KP is itself relayed"):
        reference.with_units([unit("XK.NEW", PartnerStatus.RELAYED, relay="XK.KP")])


def test_registry_cannot_be_built_inconsistent() -> None:
    with pytest.raises(RegistryError, match="registered under the id"):
        Registry({"AL.ENU": unit("AL.CTD")})
    with pytest.raises(RegistryError, match="needs a relay"):
        Registry({"XK.KP": unit("XK.KP", PartnerStatus.RELAYED)})


def test_registry_units_are_read_only(reference: Registry) -> None:
    with pytest.raises(TypeError):
        reference.units["AL.CTD"] = unit("AL.CTD")  # type: ignore[index]


def test_parse_units_of_a_profile_may_relay_via_reference_units(
    tmp_path: Path, reference: Registry
) -> None:
    profile = (
        "name: a profile\n"
        "units:\n"
        "  - id: XK.NEW\n"
        "    name: New Kosovo unit\n"
        "    status: relayed\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n"
        "    relay: EU.EULEX\n"
        "  - id: AT.ENU\n"
        "    name: Duplicate of a reference unit\n"
        "    status: member_state\n"
        "    channels: [SIENA]\n"
        "    clearance: RESTREINT_UE\n"
    )
    from exchange.core.jsonfile import parse_document

    data, lines = parse_document(profile, "profile.yaml", syntax="yaml")
    with pytest.raises(RegistryError) as caught:
        parse_units(data["units"], "profile.yaml", lines=lines, base=reference)
    assert caught.value.location.line == 9
    assert caught.value.location.field == "units[1].id"
    assert "already defined" in caught.value.reason
    del data["units"][1]
    units = parse_units(data["units"], "profile.yaml", lines=lines, base=reference)
    assert reference.with_units(units).require("XK.NEW").relay == "EU.EULEX"


def test_parse_units_accepts_a_composed_yaml_node() -> None:
    node = yaml.compose(
        "- id: AL.CTD\n  name: x\n  status: strategic\n  channels: [SIENA]\n"
        "  clearance: UNCLASSIFIED\n  relay: AL.CTD\n"
    )
    with pytest.raises(RegistryError) as caught:
        parse_units(node, "node.yaml")
    assert caught.value.location.line == 6
    assert caught.value.location.field == "[0].relay"


def test_parse_units_of_null_is_empty() -> None:
    assert parse_units(None, "<none>") == []


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("AL.CTD", True),
        ("EU.EUROPOL", True),
        ("BA.DKPT", True),
        ("AB.123456789012", True),
        ("AB.1234567890123", False),
        ("AL.C", False),
        ("al.ctd", False),
        ("ALB.CTD", False),
        ("AL-CTD", False),
        ("AL.CTD\n", False),
        (" AL.CTD", False),
    ],
)
def test_unit_id_shape(text: str, valid: bool) -> None:
    assert is_unit_id(text) is valid
