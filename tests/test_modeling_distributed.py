"""The contrastive loss's autograd-aware all-gather: two processes (gloo) averaging their gradients, as DDP does,
must get the gradients of the single-process full batch, hard negatives (`negative_pixel_values`) included.
(The trainer's own two-process test covers batches without negatives.)"""

from __future__ import annotations

import multiprocessing

import torch
from safetensors.torch import load_file, save_file

from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model

WORLD_SIZE = 2
LOCAL_BATCH = 2


def full_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = WORLD_SIZE * LOCAL_BATCH
    return {
        "reference_pixel_values": torch.randn(size, 3, 32, 32, generator=generator, dtype=torch.float64),
        "target_pixel_values": torch.randn(size, 3, 32, 32, generator=generator, dtype=torch.float64),
        "negative_pixel_values": torch.randn(size, 3, 32, 32, generator=generator, dtype=torch.float64),
        "input_ids": torch.randint(5, 200, (size, 6), generator=generator),
    }


def tiny_model() -> FashionBlip2Model:
    torch.manual_seed(0)
    # eval: no dropout differences; float64: the sums' order differs between the runs, not their results
    return FashionBlip2Model(FashionBlip2Config.from_preset("tiny")).double().eval()


def distributed_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        model = tiny_model()
        local = {k: v[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH] for k, v in full_batch().items()}
        output = model(**local, return_loss=True)
        assert output.logits_per_query.shape == (LOCAL_BATCH, 2 * WORLD_SIZE * LOCAL_BATCH)  # targets, negatives
        output.loss.backward()
        grads = {}
        for name, parameter in model.named_parameters():
            torch.distributed.all_reduce(parameter.grad)
            grads[name] = parameter.grad / WORLD_SIZE
        save_file(grads, f"{out_dir}/rank{rank}.safetensors")
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gradients_equal_the_full_batch(tmp_path):
    model = tiny_model()
    model(**full_batch(), return_loss=True).loss.backward()
    expected = {name: p.grad for name, p in model.named_parameters()}

    context = multiprocessing.get_context("spawn")  # fork can hang gloo after torch has run threads
    workers = [
        context.Process(target=distributed_worker, args=(rank, str(tmp_path / "init"), str(tmp_path)))
        for rank in range(WORLD_SIZE)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert [worker.exitcode for worker in workers] == [0] * WORLD_SIZE
    for rank in range(WORLD_SIZE):
        grads = load_file(tmp_path / f"rank{rank}.safetensors")
        assert grads.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(grads[name], expected[name], atol=1e-10, rtol=1e-8, msg=name)
