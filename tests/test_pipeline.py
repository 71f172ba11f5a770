"""The `composed-image-retrieval` pipeline saved with every model, loaded through remote code in a process where
our packages cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from modeling_fashionblip2 import FashionBlip2Model

TEXTS = ["is red with long sleeves", "has stripes"]

PIPELINE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class BlockOurPackages(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_fashionblip2", "facap_io", "facap_dataset", "facap_retrieval"):
                raise ImportError(name + " must not be importable here")
    sys.meta_path.insert(0, BlockOurPackages())
    import torch
    from transformers import pipeline

    class ExactIndex:  # the search(query_embeddings, k) -> .ids / .scores shape of an inner-product index
        def __init__(self, embeddings, ids):
            self.embeddings, self.ids = embeddings, ids
        def search(self, queries, k):
            top = (queries @ self.embeddings.T).topk(k, dim=1)
            return type("Found", (), {"scores": top.values, "ids": [[self.ids[i] for i in row] for row in
                                                                   top.indices.tolist()]})()

    folder, reference, gallery, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    retrieve = pipeline("composed-image-retrieval", model=folder, trust_remote_code=True, device="cpu")
    query = retrieve({"image": reference, "text": texts[0]})
    queries = retrieve([{"image": reference, "text": text} for text in texts])
    candidate = retrieve(gallery[0])
    top = retrieve({"image": reference, "text": texts[0]}, gallery=gallery, top_k=2)
    index = ExactIndex(torch.stack([retrieve(path) for path in gallery]), ["g%d" % i for i in range(len(gallery))])
    top_index = retrieve({"image": reference, "text": texts[0]}, gallery=index, top_k=3)
    print(json.dumps({"module": type(retrieve).__module__, "query": query.tolist(),
                      "queries": [q.tolist() for q in queries], "candidate": candidate.tolist(),
                      "top": top, "top_index": top_index}))
    """
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline_images")
    generator = torch.Generator().manual_seed(7)
    paths = []
    for index in range(5):
        pixels = (torch.rand(40, 36, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{index}.png")
        paths.append(str(folder / f"{index}.png"))
    return paths[0], paths[1:]


def _local(tiny_model_dir, tiny_processor, reference, gallery):
    model = FashionBlip2Model.from_pretrained(tiny_model_dir).eval()
    query = tiny_processor(images=[Image.open(reference).convert("RGB")], text=[TEXTS[0]])
    pixels = tiny_processor(images=[Image.open(p).convert("RGB") for p in gallery])["pixel_values"]
    with torch.no_grad():
        q = model.get_query_embeddings(query["pixel_values"], query["input_ids"], query["attention_mask"])
        c = model.get_candidate_embeddings(pixels)
    return q[0], c, model.score(q, c)[0]


def test_saved_config_names_the_pipeline(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["custom_pipelines"]["composed-image-retrieval"]["impl"] == (
        "pipeline_fashionblip2.ComposedImageRetrievalPipeline"
    )
    assert (tiny_model_dir / "pipeline_fashionblip2.py").is_file()


def test_pipeline_loads_through_remote_code_without_our_packages(tiny_model_dir, tiny_processor, images, tmp_path):
    reference, gallery = images
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE_SCRIPT, str(tiny_model_dir), reference, json.dumps(gallery),
         json.dumps(TEXTS)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["module"].startswith("transformers_modules.")
    query, candidates, scores = _local(tiny_model_dir, tiny_processor, reference, gallery)
    torch.testing.assert_close(torch.tensor(remote["query"]), query, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(remote["queries"][0]), query, atol=1e-5, rtol=0)
    assert len(remote["queries"]) == 2 and remote["queries"][1] != remote["queries"][0]
    torch.testing.assert_close(torch.tensor(remote["candidate"]), candidates[0], atol=1e-5, rtol=0)
    expected = scores.topk(2)
    assert [hit["id"] for hit in remote["top"]] == expected.indices.tolist()
    torch.testing.assert_close(torch.tensor([hit["score"] for hit in remote["top"]]), expected.values,
                               atol=1e-5, rtol=0)
    assert [hit["id"] for hit in remote["top_index"]] == [f"g{i}" for i in scores.topk(3).indices.tolist()]


def test_pipeline_in_process_and_its_bad_input(tiny_model_dir, tiny_processor, images):
    from transformers import pipeline

    reference, gallery = images
    model = FashionBlip2Model.from_pretrained(tiny_model_dir).eval()
    retrieve = pipeline("composed-image-retrieval", model=model, processor=tiny_processor, device="cpu")
    query, _, _ = _local(tiny_model_dir, tiny_processor, reference, gallery)
    torch.testing.assert_close(retrieve({"image": Image.open(reference), "text": TEXTS[0]}), query, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="a query is"):
        retrieve({"picture": reference, "text": TEXTS[0]})
    with pytest.raises(ValueError, match="top_k needs a gallery"):
        retrieve(reference, top_k=3)
    with pytest.raises(ValueError, match=r"top_k=9 must be between 1 and the gallery size \(4\)"):
        retrieve(reference, gallery=gallery, top_k=9)
    with pytest.raises(TypeError, match="input must be a PIL image, a path or a URL, got int"):
        retrieve(3)
