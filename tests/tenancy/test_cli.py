import re
from datetime import UTC, datetime

from aiplus.cli import main
from aiplus.metering.ledger import UsageEvent, write_events


def test_cli_orgs_keys_usage(db_and_url, tmp_path, monkeypatch, capsys):
    engine, url = db_and_url
    monkeypatch.setenv("AIPLUS_DATABASE_URL", url)
    monkeypatch.setenv("AIPLUS_DATA_DIR", str(tmp_path))
    assert (
        main(
            [
                "orgs",
                "add",
                "Rural School",
                "--sector",
                "education",
                "--tier",
                "lifeline",
                "--employees",
                "30",
            ]
        )
        == 0
    )
    assert main(["keys", "create", "rural-school", "--name", "lab", "--model", "m1"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^aip_\S+$", out, re.M).group(0)
    assert main(["keys", "list", "rural-school"]) == 0
    listed = capsys.readouterr().out
    assert key not in listed and key[:12] in listed
    key_id = re.search(r"key_[0-9a-f]{16}", listed).group(0)
    with engine.begin() as conn:
        write_events(
            conn,
            [
                UsageEvent(
                    "r1",
                    "rural-school",
                    key_id,
                    "m1",
                    "chat",
                    100,
                    20,
                    "ok",
                    True,
                    datetime.now(UTC),
                    5,
                    50,
                    1_500_000,
                )
            ],
        )
    assert main(["usage", "--org", "rural-school", "--by", "month"]) == 0
    out = capsys.readouterr().out
    assert "1.500000" in out and datetime.now(UTC).strftime("%Y-%m") in out
    assert main(["orgs", "show", "rural-school"]) == 0
    assert "small" in capsys.readouterr().out
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "revoke", "key_nope"]) == 1
    assert "no API key" in capsys.readouterr().err
    assert main(["orgs", "add", "X", "--sector", "ict", "--tier", "gold"]) == 1
