"""`facap-app space DIR` writes a Hugging Face Space folder (card with the Gradio SDK header, requirements,
app.py, bundled sources, the model and dataset copied) whose app.py serves the demo: started as the Space
starts it (`python app.py` in the folder, Gradio's server variables, no arguments) and queried with
gradio_client. Also: options come from FACAP_* variables, and flags win over them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest
from huggingface_hub import SpaceCard
from packaging.requirements import Requirement

from facap_app import cli
from facap_app.options import DEFAULT_MODEL, ENVIRONMENT, parse_args
from facap_app.space import BUNDLED_PACKAGES
from facap_dataset.loading import open_dataset

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_options_come_from_the_environment_and_flags_win(tmp_path):
    environ = {ENVIRONMENT["model"]: "org/model", ENVIRONMENT["dataset"]: "org/data",
               ENVIRONMENT["configs"]: "dress-gallery, shirt-gallery", ENVIRONMENT["indexes"]: f"dress-gallery={tmp_path}",
               ENVIRONMENT["split"]: "test", ENVIRONMENT["cache_dir"]: str(tmp_path), ENVIRONMENT["device"]: "cpu"}  # fmt: skip
    options = parse_args([], environ)
    assert (options.model, options.dataset, options.split, options.device) == ("org/model", "org/data", "test", "cpu")
    assert options.configs == ("dress-gallery", "shirt-gallery")
    assert options.indexes == (f"dress-gallery={tmp_path}",) and options.cache_dir == tmp_path
    flagged = parse_args(["--model", "mine", "--config", "toptee-gallery", "--split", "validation"], environ)
    assert (flagged.model, flagged.configs, flagged.split, flagged.dataset) == ("mine", ("toptee-gallery",), "validation", "org/data")
    assert parse_args([], {}).model == DEFAULT_MODEL and parse_args([], {}).configs is None


def test_empty_environment_list_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args([], {ENVIRONMENT["configs"]: " , "})
    assert exit_.value.code == 2 and "--config: expected a comma-separated list" in capsys.readouterr().err


@pytest.fixture(scope="module")
def space(tmp_path_factory, tiny_model_dir, synthetic_dir):
    out = tmp_path_factory.mktemp("space") / "fashion-search"
    code = cli.main(["space", str(out), "--model", str(tiny_model_dir), "--dataset", str(synthetic_dir),
                     "--config", "dress-gallery"])  # fmt: skip
    assert code == 0
    return out


def test_space_folder_has_the_gradio_header_requirements_and_our_sources(space, tiny_model_dir):
    card = SpaceCard.load(space / "README.md")
    assert (card.data.sdk, card.data.app_file, card.data.sdk_version) == ("gradio", "app.py", gr.__version__)
    assert card.data.title and "composed-image-retrieval" in card.data.tags
    names = {Requirement(line).name for line in (space / "requirements.txt").read_text().split()}
    assert {"torch", "transformers", "datasets", "gradio", "safetensors"} <= names and "facap" not in names
    assert all((space / package / "__init__.py").is_file() for package in BUNDLED_PACKAGES)
    assert sorted(p.name for p in (space / "model").iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())
    assert open_dataset(space / "data").configs  # a loadable copy of the dataset
    assert not list(space.rglob("__pycache__"))


def test_space_app_serves_the_demo_with_gradio_client(space, synthetic_dir, tmp_path):
    """Started the way a Space starts it: `python app.py` in the folder, Gradio's host and port from the
    environment, no arguments; the bundled sources are the ones imported."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FACAP_", "GRADIO_", "PYTHONPATH"))}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               FACAP_CACHE_DIR=str(tmp_path / "cache"), GRADIO_TEMP_DIR=str(tmp_path / "gradio"))  # fmt: skip
    imported = subprocess.run([sys.executable, "-c", "import facap_app; print(facap_app.__file__)"], cwd=space, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert Path(imported.stdout.strip()).parent == space / "facap_app"
    log = (tmp_path / "space.log").open("w")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = connect(f"http://127.0.0.1:{port}/", server, tmp_path / "space.log")
        reference = tmp_path / "reference.png"
        open_dataset(synthetic_dir).load_split("dress-gallery", "validation")[2]["image"].convert("RGB").save(reference)
        results, status = client.predict(handle_file(str(reference)), "", "dress", 4, api_name="/search")
        captions = [item["caption"] for item in results["value"]]
        assert len(captions) == 4 and status.startswith("**Image-only query**")
        # The reference is gallery row 2: an image-only query finds it first.
        gallery_ids = open_dataset(synthetic_dir).load_split("dress-gallery", "validation")["image_id"]
        assert captions[0].startswith("#1 · ") and captions[0].endswith(gallery_ids[2])
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def connect(url: str, server: subprocess.Popen, log: Path) -> Client:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the Space app exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return Client(url, verbose=False, download_files=False)
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(1)
    pytest.fail(f"the Space app did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def test_space_command_refuses_a_non_empty_folder_and_a_bad_index(tmp_path, tiny_model_dir, synthetic_dir, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "NOTES.md").write_text("mine")
    common = ["--model", str(tiny_model_dir), "--dataset", str(synthetic_dir)]
    assert cli.main(["space", str(tmp_path / "taken"), *common]) == 2
    assert "Space folder" in capsys.readouterr().err and (tmp_path / "taken" / "NOTES.md").read_text() == "mine"
    assert cli.main(["space", str(tmp_path / "new"), *common, "--index", f"dress-gallery={tmp_path / 'taken'}"]) == 2
    assert "is not an index folder" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_space_with_an_index_copies_it_and_points_the_app_at_the_copy(tmp_path, tiny_model_dir, synthetic_dir):
    from facap_eval.build_index import main as build_index_main
    from facap_retrieval.index import check_index

    index = tmp_path / "ivfpq"
    assert build_index_main(["--model", str(tiny_model_dir), "--dataset", str(synthetic_dir), "--config", "dress-gallery",
                             "--out", str(index), "--backend", "faiss-ivfpq", "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "space"
    assert cli.main(["space", str(out), "--model", str(tiny_model_dir), "--dataset", str(synthetic_dir),
                     "--config", "dress-gallery", "--index", f"dress-gallery={index}"]) == 0  # fmt: skip
    assert "faiss-cpu" in {Requirement(line).name for line in (out / "requirements.txt").read_text().split()}
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACAP_")}
    # The defaults as the Space's app.py sets them, read from another working directory: paths follow the folder.
    script = (f"import os, runpy; runpy.run_path({str(out / 'app.py')!r}, run_name='space'); "
              "print(os.environ['FACAP_INDEX']); print(os.environ['FACAP_MODEL'])")  # fmt: skip
    shown = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    index_value, model_value = shown.stdout.split()
    assert index_value == f"dress-gallery={out / 'indexes' / 'dress-gallery'}" and model_value == str(out / "model")
    assert check_index(out / "indexes" / "dress-gallery").backend == "faiss-ivfpq"
