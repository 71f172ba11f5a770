"""Model cards in best/ and final/ (training data, hyper-parameters, the evaluation as `model-index`), and
`--push-to-hub`: best/ (else final/) in one commit, recorded through a fake `HfApi` (no network)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

import train_accelerate as ta

REPO_ID = "fashion-org/fashionblip2-tiny"


class RecordingApi:
    """The `HfApi` methods an upload calls, recorded; `fail` makes the commit fail as the Hub would."""

    def __init__(self, fail: bool = False):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail = fail

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))
        return SimpleNamespace(repo_id=args[0])

    def list_repo_files(self, *args, **kwargs):
        self.calls.append(("list_repo_files", args, kwargs))
        return []

    def create_commit(self, *args, **kwargs):
        self.calls.append(("create_commit", args, kwargs))
        if self.fail:
            import httpx
            from huggingface_hub.errors import HfHubHTTPError

            request = httpx.Request("POST", f"https://huggingface.co/api/models/{REPO_ID}/commit/main")
            raise HfHubHTTPError("403 Forbidden: you cannot write to this repo", response=httpx.Response(403, request=request))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{REPO_ID}/commit/abc123")


def _argv(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--dataset", str(dataset), "--configs", "dress,shirt,toptee", "--model", "tiny", "--output-dir",
            str(output_dir), "--batch-size", "8", "--max-steps", "2", "--save-steps", "2", "--num-workers", "0",
            "--eval-batch-size", "32", "--eval-k-values", "1,5,10", "--push-to-hub", REPO_ID, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def pushed_run(synthetic_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("card") / "run"
    api = RecordingApi()
    assert ta.main(_argv(synthetic_dir, output_dir, "--hub-private"), hub_api=api) == 0
    return output_dir, api


def test_best_and_final_carry_a_card_with_the_evaluation_as_model_index(pushed_run, synthetic_dir):
    output_dir, _ = pushed_run
    for name in ("best", "final"):
        card = ModelCard.load(output_dir / name / "README.md")
        results = card.data.eval_results
        assert results, f"{name}/README.md has no model-index results"
        assert {r.dataset_config for r in results if r.dataset_config} == {"dress", "shirt", "toptee"}
        assert {r.metric_type for r in results} >= {"recall@1", "recall@5", "recall@10"}
        assert all(r.dataset_split == "validation" and r.dataset_type == str(synthetic_dir) for r in results)
        assert "preset tiny" in card.text and "| num_triplets | 81 |" in card.text
        assert "learning_rate" in card.text and "transformers" in card.text
    recorded = json.loads((output_dir / "metrics.jsonl").read_text().splitlines()[-1])["eval/average"]
    final = ModelCard.load(output_dir / "final" / "README.md").data.eval_results
    averaged = {r.metric_type: r.metric_value for r in final if r.dataset_config is None and r.metric_type.startswith("recall@")}
    assert averaged == pytest.approx({k: v for k, v in recorded.items() if k.startswith("recall@")})


def test_push_uploads_best_with_its_card_in_one_commit(pushed_run):
    output_dir, api = pushed_run
    names = [name for name, _, _ in api.calls]
    assert names.count("create_commit") == 1 and names[0] == "create_repo"
    _, args, kwargs = next(call for call in api.calls if call[0] == "create_repo")
    assert args[0] == REPO_ID and kwargs["private"] is True and kwargs["repo_type"] == "model"
    _, args, kwargs = next(call for call in api.calls if call[0] == "create_commit")
    operations = args[1] if len(args) > 1 else kwargs["operations"]
    uploaded = {op.path_in_repo: Path(op.path_or_fileobj) for op in operations}
    assert {"README.md", "model.safetensors", "config.json", "modeling_fashionblip2.py"} <= set(uploaded)
    assert all(path.parent == output_dir / "best" for path in uploaded.values())
    assert "best/" in kwargs["commit_message"]


def test_a_refused_push_is_one_line_and_keeps_the_local_outputs(synthetic_dir, tmp_path, capsys):
    output_dir = tmp_path / "run"
    code = ta.main(_argv(synthetic_dir, output_dir, "--no-eval"), hub_api=RecordingApi(fail=True))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err and len(errors) == 1
    assert f"push to {REPO_ID} failed: 403 Forbidden" in errors[0]
    assert (output_dir / "final" / "model.safetensors").is_file() and (output_dir / "final" / "README.md").is_file()
    assert (output_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
