"""An influence index of a private datanet carries no record text, and reading texts back
through it needs a grant that still works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.attribution.conftest import colour_records

from openledger.attribution import InfluenceIndex
from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, Snapshot
from openledger.exceptions import AccessDeniedError, AttributionInputError
from openledger.train import TrainingRun

Run = tuple[Snapshot, TrainingRun, list[Account]]


def private_copy(folder: Path, accounts: list[Account], owner: Account) -> Datanet:
    """The colour run's records in a private datanet: same leaves, so the same root."""
    datanet = Datanet.create(
        folder, name="clinic", schema=InstructionRecord, visibility="private", owner=owner
    )
    records = colour_records()
    for account, part in ((accounts[0], records[:6]), (accounts[1], records[6:])):
        member = datanet.approve(datanet.request_access(account, "contribute").id, owner=owner)
        datanet.contribute(part, contributor=account, grant=member)
    return datanet


def test_a_private_index_holds_no_text_and_a_revoked_grant_reads_none_back(
    colour_run: Run, tmp_path: Path
) -> None:
    public, run, accounts = colour_run
    owner, reader = Account.create(), Account.create()
    datanet = private_copy(tmp_path / "dn", accounts, owner)
    snapshot = datanet.snapshot()
    assert snapshot.root == public.root
    request = datanet.request_access(reader, "attribution")
    grant = datanet.approve(request.id, owner=owner, ttl_seconds=600)
    folder = tmp_path / "idx"
    built = InfluenceIndex.build(
        run.adapter, snapshot, "gradcos", projection_dim=8, output_dir=folder, grant=grant
    )
    written = b"".join(path.read_bytes() for path in sorted(folder.iterdir()))
    for record in colour_records():
        for text in (record.instruction, record.response):
            assert text.encode() not in written, text
    manifest = json.loads((folder / "index.json").read_text())
    assert [r["row"] for r in manifest["records"]] == list(range(10))
    assert set(manifest["records"][0]) == {"record_hash", "contributor", "row"}

    again = InfluenceIndex.load(folder, run.adapter, snapshot=snapshot, grant=grant)
    report = again.attribute("Code red?", "RED ok.")
    assert any("Code red?" in r.text for r in report.records)
    assert report.scores() == pytest.approx(built.attribute("Code red?", "RED ok.").scores())

    datanet.revoke(request.id, owner=owner)
    with pytest.raises(AccessDeniedError, match="is revoked"):
        again.attribute("Code red?", "RED ok.")
    with pytest.raises(AccessDeniedError, match="is revoked"):
        built.attribute("Code red?", "RED ok.")
    with pytest.raises(AccessDeniedError, match="is revoked"):
        InfluenceIndex.load(folder, run.adapter, snapshot=snapshot, grant=grant)
    blind = InfluenceIndex.load(folder, run.adapter).attribute("Code red?", "RED ok.")
    assert {r.text for r in blind.records} == {""}
    assert blind.scores() == pytest.approx(report.scores())
    datanet.close()


def test_an_index_of_the_older_format_with_texts_is_refused(
    colour_run: Run, tmp_path: Path
) -> None:
    snapshot, run, _ = colour_run
    folder = tmp_path / "idx"
    InfluenceIndex.build(run.adapter, snapshot, "gradcos", projection_dim=8, output_dir=folder)
    manifest = json.loads((folder / "index.json").read_text())
    manifest["format"] = "openledger.influence_index/1"
    (folder / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(AttributionInputError, match=r"influence_index/1.*rebuild it"):
        InfluenceIndex.load(folder, run.adapter)
