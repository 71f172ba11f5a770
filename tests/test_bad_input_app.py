"""Bad input to the app, walked as tables: start-up options (exit code, one `error:` line naming the culprit, no
traceback, nothing run from a model folder that was not trusted) and the `/search` and `/upload` endpoints called
through `gradio_client` (a clear `gr.Error` naming the file, and the server keeps serving). Uploads leave no
files behind: the received file is deleted at once and the reference kept for the page expires."""

from __future__ import annotations

import json
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from facap_app import cli
from facap_app.options import parse_args
from facap_app.startup import create_app, launch

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError as ClientError  # noqa: E402

MARKER_CODE = "\nimport pathlib as _p\n_p.Path({marker!r}).write_text('folder code ran')\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tampered_model(source: Path, folder: Path, marker: Path, model_type: str | None = None) -> Path:
    """A copy of a saved model whose modeling file writes `marker` when imported (optionally another model_type)."""
    shutil.copytree(source, folder)
    modeling = folder / "modeling_fashionblip2.py"
    modeling.write_text(modeling.read_text() + MARKER_CODE.format(marker=str(marker)))
    if model_type:
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = model_type
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def run_cli(argv, capsys, environ=None) -> tuple[int, str]:
    """Exit code and stderr of `facap-app ARGV` run in-process (argparse errors exit through SystemExit)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (environ or {}).items():
            patch.setenv(name, value)
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- start-up

def _missing_model(ctx):
    return ["--model", ctx["tmp"] / "no-such-model"], ["no such model folder", str(ctx["tmp"] / "no-such-model")]


def _empty_model(ctx):
    (ctx["tmp"] / "empty").mkdir()
    return ["--model", ctx["tmp"] / "empty"], [f"{ctx['tmp'] / 'empty'} has no config.json"]


def _foreign_code(ctx):
    folder = tampered_model(ctx["model"], ctx["tmp"] / "foreign", ctx["marker"], "someone-elses-model")
    return ["--model", folder], [str(folder), "pass --trust-remote-code"]


def _missing_dataset(ctx):
    return ["--dataset", ctx["tmp"] / "no-dataset"], ["cannot read dataset", str(ctx["tmp"] / "no-dataset")]


def _unknown_config(ctx):
    return ["--config", "skirt-gallery"], ["has no gallery config 'skirt-gallery'"]


def _missing_index(ctx):
    return ["--config", "dress-gallery", "--index", ctx["tmp"] / "nope"], ["no such index folder", "nope"]


def _not_an_index(ctx):
    (ctx["tmp"] / "notes").mkdir()
    (ctx["tmp"] / "notes" / "NOTES.md").write_text("mine")
    return ["--config", "dress-gallery", "--index", ctx["tmp"] / "notes"], ["is not an index folder", "notes"]


def _save_index_on_a_file(ctx):
    (ctx["tmp"] / "taken").write_text("mine")
    return ["--config", "dress-gallery", "--save-index", ctx["tmp"] / "taken"], ["--save-index", "taken", "not a folder"]


def _zero_top_k(ctx):
    return ["--top-k", "0"], ["--top-k must be >= 1, got 0"]


def _bad_device(ctx):
    return ["--device", "quantum"], ["--device", "quantum"]


STARTUP_CASES = {
    "missing model path": _missing_model,
    "folder without config.json": _empty_model,
    "foreign model code without --trust-remote-code": _foreign_code,
    "missing dataset": _missing_dataset,
    "unknown gallery config": _unknown_config,
    "missing --index folder": _missing_index,
    "--index folder that is no index": _not_an_index,
    "--save-index naming a file": _save_index_on_a_file,
    "--top-k 0": _zero_top_k,
    "unknown device": _bad_device,
}


@pytest.mark.parametrize("case", list(STARTUP_CASES))
def test_startup_bad_input_is_one_line_and_exit_2(case, tiny_model_dir, synthetic_dir, tmp_path, capsys):
    ctx = {"tmp": tmp_path, "model": tiny_model_dir, "marker": tmp_path / "marker"}
    extra, fragments = STARTUP_CASES[case](ctx)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ["--model", tiny_model_dir, "--dataset", synthetic_dir, "--cache-dir", tmp_path / "cache", *extra]
    code, err = run_cli(argv, capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") or "error: " in last
    for fragment in fragments:
        assert fragment in last
    assert "Traceback" not in err
    assert not ctx["marker"].exists()  # no code from an untrusted folder ran
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "cache"))
    assert after == before  # nothing was written next to the user's files


def test_fashionblip2_folder_is_served_without_running_its_code(tiny_model_dir, synthetic_dir, tmp_path):
    marker = tmp_path / "marker"
    folder = tampered_model(tiny_model_dir, tmp_path / "model", marker)
    options = parse_args(["--model", str(folder), "--dataset", str(synthetic_dir), "--config", "dress-gallery",
                          "--cache-dir", str(tmp_path / "cache"), "--num-examples", "0"])  # fmt: skip
    _, engine = create_app(options, tmp_path / "files")
    assert type(engine.model).__module__ == "modeling_fashionblip2.modeling_fashionblip2"
    assert not marker.exists()


def test_trust_remote_code_is_the_explicit_opt_in(tiny_model_dir, synthetic_dir, tmp_path):
    marker = tmp_path / "marker"
    folder = tampered_model(tiny_model_dir, tmp_path / "foreign", marker, "someone-elses-model")
    options = parse_args(["--model", str(folder), "--dataset", str(synthetic_dir), "--config", "dress-gallery",
                          "--cache-dir", str(tmp_path / "cache"), "--num-examples", "0", "--trust-remote-code"])  # fmt: skip
    _, engine = create_app(options, tmp_path / "files")
    assert marker.exists() and type(engine.model).__module__.startswith("transformers_modules.")


# ------------------------------------------------------------------------------------------------ endpoints


@contextmanager
def served(model_dir, dataset_dir, root: Path, *extra: str):
    """The app over `dataset_dir`'s dress gallery on a free loopback port, with Gradio's files under `root/gradio`;
    yields (client, options, files_dir)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))
        options = parse_args(["--model", str(model_dir), "--dataset", str(dataset_dir), "--config", "dress-gallery",
                              "--cache-dir", str(root / "cache"), "--num-examples", "0", "--host", "127.0.0.1",
                              "--port", str(free_port()), *extra])  # fmt: skip
        demo, _ = create_app(options, root / "files")
        launch(demo, options, root / "files", block=False, quiet=True)
        try:
            yield Client(f"http://127.0.0.1:{options.port}/", verbose=False, download_files=False), options, root / "files"
        finally:
            demo.close()


@pytest.fixture(scope="module")
def api(tiny_model_dir, synthetic_dir, tmp_path_factory):
    with served(tiny_model_dir, synthetic_dir, tmp_path_factory.mktemp("served")) as (client, _, _):
        yield client


@pytest.fixture(scope="module")
def good_reference(tmp_path_factory, synthetic_dir):
    from facap_dataset.loading import open_dataset

    path = tmp_path_factory.mktemp("refs") / "good.png"
    open_dataset(synthetic_dir).load_split("dress-gallery", "validation")[0]["image"].convert("RGB").save(path)
    return path


def _text_file(folder: Path) -> Path:
    (folder / "notes.txt").write_text("this is not a picture")
    return folder / "notes.txt"


def _text_named_png(folder: Path) -> Path:
    (folder / "holiday.png").write_text("this is not a picture either")
    return folder / "holiday.png"


def _huge_png(folder: Path) -> Path:
    Image.new("1", (20_000, 20_000)).save(folder / "huge.png")  # 400 megapixels in a few hundred kB
    return folder / "huge.png"


SEARCH_CASES = {
    "text file": (_text_file, r"notes\.txt cannot be used as a reference image: image notes\.txt cannot be decoded"),
    "text file named .png": (_text_named_png, r"holiday\.png cannot be used as a reference image: image holiday\.png cannot be decoded"),
    "20000x20000 PNG": (_huge_png, r"huge\.png cannot be used as a reference image: .*decompression bomb"),
    "no reference": (None, "Choose a reference image first"),
}


@pytest.mark.parametrize("case", list(SEARCH_CASES))
def test_search_endpoint_bad_reference_is_a_clear_error_and_the_server_keeps_serving(case, api, good_reference, tmp_path):
    make, message = SEARCH_CASES[case]
    reference = handle_file(str(make(tmp_path))) if make else None
    with pytest.raises(ClientError, match=message) as error:
        api.predict(reference, "is red", "dress", 5, api_name="/search")
    assert "/gradio/" not in str(error.value)  # the sender's file name, not the server's path
    results, status = api.predict(handle_file(str(good_reference)), "is red", "dress", 5, api_name="/search")
    assert len(results["value"]) == 5 and status.startswith("Query: “is red”. 5 results")


@pytest.mark.parametrize(
    "make, message",
    [(_text_file, r"Invalid file type"),  # refused by Gradio itself: the button accepts image types only
     (_text_named_png, r"holiday\.png cannot be used as a reference image: image holiday\.png cannot be decoded"),
     (_huge_png, r"huge\.png cannot be used as a reference image: .*decompression bomb")],
    ids=["text file", "text file named .png", "20000x20000 PNG"],
)  # fmt: skip
def test_upload_endpoint_bad_file_is_a_clear_error(make, message, api, tmp_path):
    with pytest.raises(ClientError, match=message):
        api.predict(handle_file(str(make(tmp_path))), api_name="/upload")


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_uploads_leave_no_files_behind(tiny_model_dir, synthetic_dir, tmp_path):
    """Ten 3 MB uploads (the issue's 31 MB) keep nothing of the received files; the references kept for the page
    are small PNGs, deleted once `--upload-ttl` has passed."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    with served(tiny_model_dir, synthetic_dir, tmp_path / "app", "--upload-ttl", "2") as (client, _, files_dir):
        gradio_dir = tmp_path / "app" / "gradio"
        before = {p for p in _files(gradio_dir) + _files(files_dir)}
        sent = 0
        for number in range(10):
            path = uploads / f"photo-{number}.bmp"  # uncompressed: 3 MB each
            Image.linear_gradient("L").resize((1000, 1000)).convert("RGB").point(lambda v, n=number: (v + 20 * n) % 256).save(path)
            sent += path.stat().st_size
            reference, target, status = client.predict(handle_file(str(path)), api_name="/upload")
            assert status == f"Reference: uploaded `photo-{number}.bmp`." and target is None
        kept = [p for p in _files(gradio_dir) + _files(files_dir) if p not in before]
        assert not any(p.suffix == ".bmp" for p in kept)  # every received file was deleted
        assert sum(p.stat().st_size for p in kept) < sent / 10  # what is kept is far smaller than one upload
        deadline = time.monotonic() + 30
        while any(p.exists() and p.suffix == ".png" for p in kept) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(p.exists() for p in kept if p.suffix == ".png")  # the references expired


def test_a_server_path_that_was_not_uploaded_is_refused(api, good_reference, tmp_path):
    """Through raw HTTP (gradio_client would upload a local path itself): a file payload naming a file on the
    server that nobody uploaded is refused before the handler runs, and the server keeps serving."""
    import httpx

    private = tmp_path / "private.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(private)
    url = f"{api.src.rstrip('/')}/gradio_api/call/search"
    payload = {"data": [{"path": str(private), "meta": {"_type": "gradio.FileData"}}, "is red", "dress", 3]}
    event = httpx.post(url, json=payload, timeout=30).json()["event_id"]
    with httpx.stream("GET", f"{url}/{event}", timeout=60) as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[0] == "event: error" and not any("#1 · " in line for line in lines)
    results, _ = api.predict(handle_file(str(good_reference)), "is red", "dress", 3, api_name="/search")
    assert len(results["value"]) == 3
