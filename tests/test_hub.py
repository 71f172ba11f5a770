"""`push`: exactly the card and the shards go up, in one commit that also removes stale shards; offline."""

from __future__ import annotations

import io

import pytest
from datasets import Dataset, DatasetDict
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from PIL import Image

from facap_dataset import hub
from facap_dataset.cli import main
from facap_dataset.errors import DataError
from facap_dataset.export import DatasetCardInfo, write_dataset
from facap_dataset.schema import GALLERY_FEATURES
from facap_io.hub import PushError


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def built(tmp_path):
    rows = {"image_id": ["a", "b"], "category": ["dress"] * 2, "image": [{"bytes": _jpeg(), "path": None}] * 2}
    split = Dataset.from_dict(rows, features=GALLERY_FEATURES)
    configs = {"dress-gallery": DatasetDict(train=split, validation=split)}
    card = DatasetCardInfo(pretty_name="Push test", description="d", source="s", license="mit", build_command="pytest")
    out = write_dataset(tmp_path / "built", configs, card=card)
    (tmp_path / "built" / "notes.txt").write_text("not part of the dataset")
    return out


class OfflineApi(HfApi):
    """A real HfApi whose three network calls are replaced: it records the commit a push would make."""

    def __init__(self, remote_files):
        super().__init__(token=False)
        self.remote_files = remote_files
        self.created = self.commit = None

    def create_repo(self, repo_id, **kwargs):
        self.created = (repo_id, kwargs)

    def list_repo_files(self, repo_id, **kwargs):
        assert kwargs["repo_type"] == "dataset"
        return list(self.remote_files)

    def create_commit(self, repo_id, operations, **kwargs):
        self.commit = (repo_id, operations, kwargs)


EXPECTED = [
    "README.md",
    "dress-gallery/train-00000-of-00001.parquet",
    "dress-gallery/validation-00000-of-00001.parquet",
]


def test_upload_plan_lists_card_and_shards_only(built):
    assert hub.upload_plan(built) == EXPECTED


def test_push_is_one_commit_that_replaces_stale_shards(built):
    old = ["dress-gallery/train-00000-of-00002.parquet", "dress-gallery/train-00001-of-00002.parquet"]
    api = OfflineApi([".gitattributes", "README.md", "notes.md", EXPECTED[1], *old])
    assert hub.push(built, "me/push-test", private=True, api=api) == EXPECTED
    assert api.created == ("me/push-test", {"repo_type": "dataset", "private": True, "exist_ok": True})
    repo_id, operations, kwargs = api.commit
    assert repo_id == "me/push-test" and kwargs == {"repo_type": "dataset", "commit_message": "Upload Push test"}
    added = {op.path_in_repo: op.path_or_fileobj for op in operations if isinstance(op, CommitOperationAdd)}
    assert added == {name: str(built / name) for name in EXPECTED}
    assert [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)] == old


def test_push_cli_dry_run_and_bad_inputs(built, tmp_path, capsys):
    assert main(["push", str(built), "me/push-test", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == EXPECTED and "would upload 3 files" in captured.err
    assert main(["push", str(tmp_path), "me/push-test", "--dry-run"]) == 2
    assert "is not a built dataset folder" in capsys.readouterr().err
    with pytest.raises(PushError, match="invalid Hub repo id 'me/bad--name'"):
        hub.push(built, "me/bad--name", dry_run=True)
    for shard in (built / "dress-gallery").glob("validation-*"):
        shard.unlink()
    with pytest.raises(DataError, match="split 'validation' has no file matching"):
        hub.upload_plan(built)


@pytest.mark.parametrize("linked", ["README.md", "dress-gallery/train-00000-of-00001.parquet"])
def test_push_refuses_symlinks(built, tmp_path, capsys, linked):
    outside = tmp_path / "outside.bin"
    outside.write_bytes((built / linked).read_bytes())
    (built / linked).unlink()
    (built / linked).symlink_to(outside)
    api = OfflineApi([])
    with pytest.raises(PushError, match=f"refusing to upload {linked}: it is a symbolic link"):
        hub.push(built, "me/push-test", api=api)
    assert api.created is None and api.commit is None  # refused before any request
    assert main(["push", str(built), "me/push-test", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: refusing to upload {linked}")
