"""The Gradio demo (app.py over facap_app): start-up, the query handlers and their bad input, and a real-browser search.

The browser test starts the app on a free loopback port and drives Debian's Chromium through Playwright
(no browser download). It is skipped only where /usr/bin/chromium is missing; CI installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import gradio as gr
import pytest
import torch
from PIL import Image

from facap_app import catalogue as app_catalogue
from facap_app import cli, ui
from facap_app.errors import AppError
from facap_app.model import select_device
from facap_app.options import parse_args
from facap_app.search import MAX_QUERY_SIDE
from facap_app.startup import create_app, launch
from facap_dataset.captions import join_captions
from facap_dataset.loading import open_dataset
from facap_retrieval.index import CIRIndex, index_folders
from facap_retrieval.ranking import RetrievalError

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# Flags for a root, offline, headless Chromium: without the background-networking ones it keeps trying to
# reach Google's hosts, which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOP_K = 6
QUERY_TEXTS = ("is red with long sleeves", "make it blue and striped", "has a v neck and is shorter")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_args(model_dir, dataset_dir, cache_dir, *extra: str):
    return parse_args(
        ["--model", str(model_dir), "--dataset", str(dataset_dir), "--cache-dir", str(cache_dir),
         "--top-k", str(TOP_K), "--num-examples", "2", "--host", "127.0.0.1", "--port", str(free_port()), *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory, tiny_model_dir, synthetic_dir):
    """The demo over the tiny model and the synthetic validation galleries (indexes built and cached)."""
    root = tmp_path_factory.mktemp("app")
    args = app_args(tiny_model_dir, synthetic_dir, root / "cache")
    demo, engine = create_app(args, root / "files")
    return args, demo, engine


@pytest.fixture(scope="module")
def actions(demo_app):
    return ui.DemoActions(demo_app[2])


def gallery(synthetic_dir, category="dress") -> datasets.Dataset:
    return datasets.load_dataset(str(synthetic_dir), f"{category}-gallery", split="validation")


def reference_file(image: Image.Image, folder: Path, name: str = "reference.png") -> str:
    """The reference slot hands the handlers a file path (as the browser and the API send it)."""
    image.save(folder / name)
    return str(folder / name)


# ------------------------------------------------------------------------------------------------ start-up


def test_startup_builds_every_gallery_index_then_reads_the_cache(demo_app, tiny_model_dir, synthetic_dir, tmp_path):
    args, demo, engine = demo_app
    assert sorted(engine.catalogues) == ["dress", "shirt", "toptee"]
    for category, catalogue in engine.catalogues.items():
        assert catalogue.index.ids == list(gallery(synthetic_dir, category)["image_id"])
        assert catalogue.index_source.startswith("built")
    again = create_app(app_args(tiny_model_dir, synthetic_dir, args.cache_dir, "--config", "shirt-gallery"), tmp_path)[1]
    assert list(again.catalogues) == ["shirt"]
    assert again.catalogues["shirt"].index_source.startswith("read from the cache")
    assert torch.equal(again.catalogues["shirt"].index.embeddings, engine.catalogues["shirt"].index.embeddings)


def test_saved_index_is_searched_without_encoding_the_gallery(demo_app, tiny_model_dir, synthetic_dir, tmp_path, capsys):
    args, _, engine = demo_app
    common = ["--model", str(tiny_model_dir), "--dataset", str(synthetic_dir), "--config", "toptee-gallery"]
    assert cli.main([*common, "--cache-dir", str(args.cache_dir), "--save-index", str(tmp_path / "indexes")]) == 0
    saved = tmp_path / "indexes" / "toptee-gallery"
    assert f"--index toptee-gallery={saved}" in capsys.readouterr().out
    cache = tmp_path / "fresh-cache"
    loaded = create_app(app_args(tiny_model_dir, synthetic_dir, cache, *common[4:], "--index", str(saved)), tmp_path)[1]
    assert loaded.catalogues["toptee"].index_source == f"loaded from {saved} (exact)"
    assert torch.equal(loaded.catalogues["toptee"].index.embeddings, engine.catalogues["toptee"].index.embeddings)
    assert not cache.exists()  # nothing was encoded, so nothing was cached


def test_index_of_another_gallery_or_model_is_refused(demo_app, tiny_model_dir, synthetic_dir, tmp_path):
    engine = demo_app[2]
    shirts = engine.catalogues["shirt"].index.save(tmp_path / "shirt-index")  # records its gallery's fingerprint
    args = app_args(tiny_model_dir, synthetic_dir, tmp_path, "--config", "dress-gallery", "--index", str(shirts))
    with pytest.raises(AppError, match=r"built from gallery .*shirt-gallery validation .* differs from the gallery in use"):
        create_app(args, tmp_path / "files")
    shirt = engine.catalogues["shirt"].index
    CIRIndex.build(shirt.embeddings, shirt.ids).save(tmp_path / "bare-shirt-index")  # records nothing: ids checked
    args = app_args(tiny_model_dir, synthetic_dir, tmp_path, "--config", "dress-gallery", "--index", str(tmp_path / "bare-shirt-index"))
    with pytest.raises(AppError, match="not in gallery dress-gallery"):
        create_app(args, tmp_path / "files")
    dress = engine.catalogues["dress"].index
    other_model = CIRIndex.build(torch.nn.functional.normalize(torch.randn(len(dress), 7), dim=1), dress.ids)
    other_model.save(tmp_path / "other-model")
    args = app_args(tiny_model_dir, synthetic_dir, tmp_path, "--config", "dress-gallery", "--index", str(tmp_path / "other-model"))
    with pytest.raises(AppError, match="7-d embeddings"):
        create_app(args, tmp_path / "files")


def test_index_option_needs_its_config_when_several_are_searched(tmp_path):
    with pytest.raises(RetrievalError, match="name its config"):
        index_folders([str(tmp_path)], ["dress-gallery", "shirt-gallery"])
    with pytest.raises(RetrievalError, match="not among"):
        index_folders([f"skirt-gallery={tmp_path}"], ["dress-gallery"])
    with pytest.raises(RetrievalError, match="no such index folder"):
        index_folders([str(tmp_path / "missing")], ["dress-gallery"])
    assert index_folders([f"shirt-gallery={tmp_path}"], ["dress-gallery", "shirt-gallery"]) == {
        "shirt-gallery": tmp_path
    }


def test_unknown_model_path_exits_non_zero_with_a_clear_message(synthetic_dir, tmp_path):
    """The real command line, in a fresh process: one `error:` line naming the path, exit code 2."""
    missing = tmp_path / "no-such-model"
    result = subprocess.run(
        [sys.executable, "app.py", "--model", str(missing), "--dataset", str(synthetic_dir), "--cache-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert f"error: model {missing}: no such model folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_unusable_model_folder_and_unknown_config_fail_cleanly(synthetic_dir, tmp_path, capsys):
    (tmp_path / "empty-model").mkdir()
    assert cli.main(["--model", str(tmp_path / "empty-model"), "--dataset", str(synthetic_dir)]) == 2
    assert f"error: model {tmp_path / 'empty-model'} has no config.json" in capsys.readouterr().err
    assert cli.main(["--model", str(tmp_path), "--dataset", str(synthetic_dir), "--config", "skirt-gallery"]) == 2
    assert "has no gallery config 'skirt-gallery'" in capsys.readouterr().err
    assert cli.main(["--model", str(tmp_path), "--dataset", str(tmp_path / "no-dataset")]) == 2
    assert "error: cannot read dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- queries


def test_search_returns_k_results_ranked_by_score(actions, demo_app, synthetic_dir, tmp_path):
    catalogue = demo_app[2].catalogues["dress"]
    reference = gallery(synthetic_dir)[0]["image"].convert("RGB")
    results, status = actions.search(reference_file(reference, tmp_path), QUERY_TEXTS[0], "dress", TOP_K)
    captions = [item["caption"] for item in results.value]
    ranks, scores, ids = zip(*(caption.split(" · ") for caption in captions))
    assert ranks == tuple(f"#{rank}" for rank in range(1, TOP_K + 1))
    assert list(scores) == sorted(scores, reverse=True)
    query = demo_app[2].encode_query(reference, QUERY_TEXTS[0])[0]
    exact = torch.topk((query @ catalogue.index.embeddings.T)[0], TOP_K)
    assert list(ids) == [catalogue.ids[i] for i in exact.indices.tolist()]
    assert results.label == ui.RESULTS_LABEL
    assert status.startswith(f"Query: “{QUERY_TEXTS[0]}”. {TOP_K} results from {len(catalogue.ids)} `dress` images")
    assert status.endswith(f"ms on {demo_app[2].device.type}.")


def test_empty_text_is_an_image_only_query_and_says_so(actions, demo_app, synthetic_dir, tmp_path):
    engine = demo_app[2]
    row = 3
    reference = gallery(synthetic_dir)[row]["image"].convert("RGB")
    results, status = actions.search(reference_file(reference, tmp_path), "   ", "dress", TOP_K)
    assert results.label == ui.IMAGE_ONLY_LABEL
    assert status.startswith(ui.IMAGE_ONLY_NOTE)
    hits = engine.search(reference, "", "dress", TOP_K)
    assert hits.image_only
    # The reference is in the gallery, so an image-only query finds it first, with a cosine of 1.
    assert hits.rows[0] == row and hits.scores[0] == pytest.approx(1.0, abs=1e-4)


def test_search_without_reference_asks_for_one(actions):
    with pytest.raises(gr.Error, match="Choose a reference image first"):
        actions.search(None, "is red", "dress", TOP_K)


def test_non_image_upload_is_refused_with_its_name(actions, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not a picture")
    with pytest.raises(gr.Error, match=r"holiday\.png cannot be used as a reference image: image holiday\.png cannot be decoded"):
        actions.upload(str(fake))


def test_huge_upload_is_downscaled_and_said_so(actions, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("RGB", (4000, 2500), (200, 30, 30)).save(huge)
    image, target, status = actions.upload(str(huge))
    assert image.size == (MAX_QUERY_SIDE, 640)
    assert image.getpixel((10, 10)) == (200, 30, 30)
    assert target is None
    assert "downscaled from 4000×2500 to 1024×640" in status


def test_decompression_bomb_upload_is_refused(actions, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 9_500)).save(bomb)  # 95 megapixels, a few kB on disk
    with pytest.raises(gr.Error, match="bomb.png cannot be used as a reference image: .*decompression bomb"):
        actions.upload(str(bomb))


def test_upload_keeps_pixels_and_converts_to_rgb(actions, tmp_path):
    rgba = tmp_path / "cut-out.png"
    Image.new("RGBA", (40, 30), (0, 0, 255, 0)).save(rgba)  # fully transparent: shown on white
    image, _, status = actions.upload(str(rgba))
    assert image.mode == "RGB" and image.size == (40, 30) and image.getpixel((0, 0)) == (255, 255, 255)
    assert "uploaded `cut-out.png`" in status and "downscaled" not in status


def test_examples_are_validation_triplets_with_their_targets(demo_app, synthetic_dir, tmp_path):
    args = demo_app[0]
    examples = app_catalogue.load_examples(args, open_dataset(synthetic_dir), ["dress", "toptee"], tmp_path)
    triplets = datasets.load_dataset(str(synthetic_dir), "dress", split="validation")
    assert [e.category for e in examples] == ["dress", "dress", "toptee", "toptee"]
    first = examples[0]
    assert first.text == join_captions(triplets[0]["captions"])
    with Image.open(first.target_path) as target:
        assert list(target.convert("RGB").getdata()) == list(triplets[0]["target_image"].convert("RGB").getdata())


def test_browse_pages_wrap_around_and_a_click_picks_the_reference(actions, demo_app):
    catalogue = demo_app[2].catalogues["dress"]
    paths, rows, page = actions.browse("dress")
    assert rows == list(range(min(len(catalogue.ids), ui.BROWSE_PAGE_SIZE))) and page == 0
    assert all(Path(path).read_bytes() == catalogue.image_bytes[row] for path, row in zip(paths, rows))
    pages = -(-len(catalogue.ids) // ui.BROWSE_PAGE_SIZE)
    assert actions.next_page("dress", pages - 1)[2] == 0
    path, target, status = actions.pick("dress", rows, gr.SelectData(None, {"index": 2, "value": None}))
    assert Path(path).read_bytes() == catalogue.image_bytes[rows[2]] and target is None
    assert status == f"Reference: catalogue image `{catalogue.ids[rows[2]]}` (dress)."


def test_device_defaults_to_cuda_when_present():
    assert select_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(AppError, match="not a torch device"):
        select_device("quantum")


# ------------------------------------------------------------------------------------------------- browser


def model_top_query(model_dir, dataset_dir, category: str, num_candidates: int = 4) -> tuple[Image.Image, str, str]:
    """Rank the gallery with the model itself (no app code) for the first validation triplets' queries, and
    return the (reference, text, top id) whose first result leads its runner-up by the widest margin, so
    that float noise between batchings cannot flip the assertion."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    items = gallery(dataset_dir, category)
    triplets = datasets.load_dataset(str(dataset_dir), category, split="validation")
    best = None
    with torch.inference_mode():
        pixels = processor(images=[image.convert("RGB") for image in items["image"]], return_tensors="pt")["pixel_values"]
        candidates = torch.cat([model.get_candidate_embeddings(batch) for batch in pixels.split(64)])
        for triplet in triplets.select(range(min(num_candidates, len(triplets)))):
            image, text = triplet["reference_image"].convert("RGB"), join_captions(triplet["captions"])
            inputs = processor(images=[image], text=[text], return_tensors="pt")
            query = model.get_query_embeddings(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
            top = torch.topk((query @ candidates.T)[0], 2)
            margin = float(top.values[0] - top.values[1])
            if best is None or margin > best[0]:
                best = (margin, image, text, items[int(top.indices[0])]["image_id"])
    return best[1], best[2], best[3]


@pytest.fixture
def browser_app(demo_app, tmp_path):
    """The app the browser drives: the tiny fixtures, or FACAP_APP_MODEL + FACAP_APP_DATASET when both are set
    (e.g. the `make demo` model, to refresh docs/screenshot.png with FACAP_APP_SCREENSHOT=docs/screenshot.png)."""
    model, dataset = os.environ.get("FACAP_APP_MODEL"), os.environ.get("FACAP_APP_DATASET")
    if not (model and dataset):
        return demo_app
    args = app_args(model, dataset, tmp_path / "cache")
    return (args, *create_app(args, tmp_path / "files"))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
def test_browser_upload_type_search_shows_the_models_top_result(browser_app, tmp_path):
    from playwright.sync_api import sync_playwright

    args, demo, engine = browser_app
    category = next(iter(engine.catalogues))  # the one the page opens on
    image, text, expected_top = model_top_query(args.model, args.dataset, category)
    upload = tmp_path / "my-reference.png"
    image.save(upload)

    launch(demo, args, engine.files_dir, block=False, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://{args.host}:{args.port}/", wait_until="load")
            page.wait_for_selector("#catalogue img")
            page.locator("input[type=file]").set_input_files(str(upload))
            page.wait_for_selector("#reference img")
            page.fill("#text textarea", text)
            page.click("#search")
            page.wait_for_function("document.querySelectorAll('#results .thumbnail-item img').length > 0")
            thumbnails = page.locator("#results .thumbnail-item")
            count = thumbnails.count()
            first_caption = thumbnails.first.locator(".caption-label").inner_text()
            status = page.inner_text("#status")
            page.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert count == TOP_K
    assert first_caption.startswith("#1 · ") and first_caption.endswith(f" · {expected_top}")
    assert f"Query: “{text}”" in status
    if os.environ.get("FACAP_APP_SCREENSHOT"):
        shutil.copyfile(tmp_path / "screenshot.png", os.environ["FACAP_APP_SCREENSHOT"])
