"""`exchange envelope ...` as a user types it: files in, files out, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exchange.cli.main import main

HEADER = {
    "kind": "REQUEST",
    "sender": "AL.CTD",
    "to": ["EU.EUROPOL"],
    "channel": "CT",
    "crime_area": "terrorism",
    "purpose": "cross_checking",
    "priority": "normal",
    "classification": "RESTREINT_UE",
    "handling": {"codes": ["H0", "H2"]},
    "evaluation": {"source": "B", "information": "2"},
    "subjects": {"individuals": [{"category": "suspect", "minor": False}], "legal_entities": 1},
}
SECRET_TEXT = "Subject travels under the alias GREYHERON on Tuesday."
BODY = {
    "text": SECRET_TEXT,
    "persons": [
        {
            "family_name": "SAMPLE",
            "given_names": "Person",
            "birth_date": "1990-01-01",
            "nationality": "AL",
            "role": "suspect",
            "minor": False,
        }
    ],
    "organisations": [{"name": "Example Trading Ltd", "country": "AT", "registration": "FN 1"}],
    "attachments": [{"name": "note.txt", "media_type": "text/plain", "path": "note.txt"}],
}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "h.json").write_text(json.dumps(HEADER))
    (tmp_path / "b.json").write_text(json.dumps(BODY))
    (tmp_path / "note.txt").write_bytes(b"attached note\n")
    return tmp_path


def seal_file(files: Path, certs: Path, *extra: str) -> Path:
    out = files / "m.env"
    code = main(
        [
            "envelope",
            "seal",
            "--from",
            "AL.CTD",
            "--certs",
            str(certs),
            "--header",
            str(files / "h.json"),
            "--body",
            str(files / "b.json"),
            "--out",
            str(out),
            *extra,
        ]
    )
    assert code == 0
    return out


def test_seal_verify_open_show(
    files: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = seal_file(files, dev_pki)
    capsys.readouterr()
    assert (
        main(["envelope", "verify", str(envelope), "--certs", str(dev_pki), "--format", "json"])
        == 0
    )
    verified = json.loads(capsys.readouterr().out)
    assert verified["valid"] and verified["suite"] == "hybrid-pq-2026"
    out = files / "opened.json"
    assert (
        main(
            [
                "envelope",
                "open",
                str(envelope),
                "--as",
                "EU.EUROPOL",
                "--certs",
                str(dev_pki),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    opened = json.loads(out.read_text())
    assert opened["text"] == SECRET_TEXT
    attachment = opened["attachments"][0]
    assert (out.parent / attachment["path"]).read_bytes() == b"attached note\n"
    capsys.readouterr()
    assert main(["envelope", "show", str(envelope)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sender"] == "AL.CTD" and shown["to"] == ["EU.EUROPOL"]
    assert SECRET_TEXT not in json.dumps(shown)


def test_classic_suite_can_be_asked_for(
    files: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = seal_file(files, dev_pki, "--suite", "classic-2026")
    capsys.readouterr()
    assert (
        main(["envelope", "verify", str(envelope), "--certs", str(dev_pki), "--format", "json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["suite"] == "classic-2026"


def test_tampered_file_exits_3_naming_the_check(
    files: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = seal_file(files, dev_pki)
    data = bytearray(envelope.read_bytes())
    data[-5] ^= 0x01  # inside the body ciphertext
    envelope.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["envelope", "verify", str(envelope), "--certs", str(dev_pki)]) == 3
    assert "ENV-DIGEST-MISMATCH" in capsys.readouterr().err


def test_unlisted_unit_cannot_open(
    files: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = seal_file(files, dev_pki)
    code = main(
        [
            "envelope",
            "open",
            str(envelope),
            "--as",
            "RS.CTU",
            "--certs",
            str(dev_pki),
            "--out",
            str(files / "x.json"),
        ]
    )
    assert code == 3
    assert "ENV-NOT-RECIPIENT" in capsys.readouterr().err
    assert not (files / "x.json").exists()


@pytest.mark.parametrize("content", [b"", os.urandom(300), b"hello world\n"])
def test_garbage_file_exits_2_without_traceback(
    tmp_path: Path, dev_pki: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "garbage.env"
    path.write_bytes(content)
    assert main(["envelope", "verify", str(path), "--certs", str(dev_pki)]) == 2
    err = capsys.readouterr().err
    assert "ENV-MALFORMED" in err and "Traceback" not in err


def test_missing_file_exits_2(
    tmp_path: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["envelope", "verify", str(tmp_path / "nope.env"), "--certs", str(dev_pki)]) == 2
    assert "no such envelope file" in capsys.readouterr().err


def test_bad_header_names_file_line_and_field(
    files: Path, dev_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = dict(HEADER, channel="CTX")
    (files / "h.json").write_text(json.dumps(broken, indent=2))
    code = main(
        [
            "envelope",
            "seal",
            "--from",
            "AL.CTD",
            "--certs",
            str(dev_pki),
            "--header",
            str(files / "h.json"),
            "--body",
            str(files / "b.json"),
            "--out",
            str(files / "m.env"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "h.json" in err and "channel" in err and "line" in err
    assert not (files / "m.env").exists()


def test_sealed_round_trip_never_logs_the_body(
    files: Path, dev_pki: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from exchange.logs import configure

    configure(level="DEBUG", json=True)
    envelope = seal_file(files, dev_pki)
    main(
        [
            "envelope",
            "open",
            str(envelope),
            "--as",
            "EU.EUROPOL",
            "--certs",
            str(dev_pki),
            "--out",
            str(files / "o.json"),
        ]
    )
    captured = capfd.readouterr()
    logged = captured.err + captured.out
    assert "envelope sealed" in logged and "envelope opened" in logged
    assert SECRET_TEXT not in logged
    assert "SAMPLE" not in logged
    assert "PRIVATE KEY" not in logged
