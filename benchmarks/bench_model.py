"""FashionBLIP-2 performance.

CPU (default): with the `demo` preset, the forward+backward step time of FashionBlip2Model against the same work
done by a bare transformers Blip2ForImageTextRetrieval (ITC forward over the reference and target images and the
texts, plus a hand-written InfoNCE): process CPU time, the two run back to back each round, headline = median of
the per-round ratios (`ratio_vs_blip2_itc`, target <= 1.3), with the FLOP ratio beside it;
the memory of a training step with the vision tower frozen vs unfrozen (bytes of parameters, gradients, AdamW state
and the activations autograd saves for backward, counted exactly with saved-tensor hooks); and, for the
`blip2-vit-g` preset built on the meta device, total / trainable parameter counts against BLIP-2's.

`--device cuda`: with the `blip2-vit-g` preset on a GPU, bf16-autocast training step time and peak GPU memory
(activation checkpointing on; frozen vision tower in bf16) for the given batch sizes.

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model  # noqa: E402

# BLIP-2 paper (Li et al., 2023): "Q-Former ... contains 188M parameters"; EVA-CLIP ViT-g/14 with its last layer
# removed (39 of 40 layers) is the frozen image encoder, ~1.0B parameters ("ViT-g/14 ... 1.0B" in Table 1 of
# EVA-CLIP); both rounded in the papers.
PUBLISHED_QFORMER_PARAMS = 188e6
PUBLISHED_VIT_G_PARAMS = 1.0e9


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16, help="CPU step-time batch (default 16)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (default 5)")
    parser.add_argument("--text-length", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadiest timing)")
    parser.add_argument("--device", help="training-step mode on this device (e.g. cuda): bf16 autocast steps")
    parser.add_argument("--preset", default="blip2-vit-g", help="preset of the --device mode (default blip2-vit-g)")
    parser.add_argument("--batch-sizes", default="32,128", help="batch sizes of the --device mode")
    return parser.parse_args(argv)


def blip2_twin(config: FashionBlip2Config):
    """A Blip2ForImageTextRetrieval with the same vision tower, Q-Former and queries as `config`."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    blip2_config = Blip2Config(
        vision_config=config.vision_config.to_dict(),
        qformer_config=config.qformer_config.to_dict(),
        num_query_tokens=config.num_query_tokens,
        image_text_hidden_size=config.image_text_hidden_size,
    )
    return Blip2ForImageTextRetrieval(blip2_config)


def make_batch(config: FashionBlip2Config, batch_size: int, text_length: int, device="cpu") -> dict:
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    return {
        "reference_pixel_values": torch.randn(batch_size, 3, size, size, generator=generator).to(device),
        "target_pixel_values": torch.randn(batch_size, 3, size, size, generator=generator).to(device),
        "input_ids": torch.randint(5, 500, (batch_size, text_length), generator=generator).to(device),
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long, device=device),
    }


def ours_step(model, batch) -> torch.Tensor:
    loss = model(**batch, return_loss=True).loss
    loss.backward()
    return loss


def blip2_step(model, batch, temperature: float = 0.07) -> torch.Tensor:
    """The bare BLIP-2 work: ITC over reference + target images and the texts, InfoNCE text -> target."""
    pixels = torch.cat([batch["reference_pixel_values"], batch["target_pixel_values"]])
    out = model(pixel_values=pixels, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    batch_size = batch["input_ids"].shape[0]
    logits = out.logits_per_text[:, batch_size:] / temperature
    loss = F.cross_entropy(logits, torch.arange(batch_size, device=logits.device))
    loss.backward()
    return loss


def paired_times(steps: dict, rounds: int) -> dict[str, list[float]]:
    """CPU seconds (process time, so waiting for a busy machine does not count) of each step function, the
    functions run back to back in every round so that load changes hit both alike."""
    for step in steps.values():  # warm-up
        step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.process_time()
            step()
            times[name].append(time.process_time() - start)
    return times


def step_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def training_step_bytes(model, batch) -> dict[str, int]:
    """Exact bytes of one training step: parameters, gradients and AdamW's two moments of the trainable ones,
    and the tensors autograd saves for backward (the activations)."""
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch, return_loss=True).loss
    loss.backward()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = {"parameter_bytes": params, "gradient_bytes": trainable, "adamw_state_bytes": 2 * trainable}
    state["activation_bytes"] = sum(saved.values())
    state["total_bytes"] = sum(state.values())
    return state


def parameter_counts() -> dict:
    """blip2-vit-g preset on the meta device vs a Blip2ForImageTextRetrieval of the same architecture."""
    config = FashionBlip2Config.from_preset("blip2-vit-g")
    with torch.device("meta"):
        ours = FashionBlip2Model(config)
        blip2 = blip2_twin(config)

    def count(module, trainable_only=False):
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

    qformer_ours = count(ours.qformer) + count(ours.embeddings) + ours.query_tokens.numel()
    qformer_blip2 = count(blip2.qformer) + count(blip2.embeddings) + blip2.query_tokens.numel()
    return {
        "total": count(ours),
        "trainable": count(ours, trainable_only=True),
        "frozen_vision": count(ours.vision_model),
        "blip2_vision": count(blip2.vision_model),
        "frozen_vision_equals_blip2": count(ours.vision_model) == count(blip2.vision_model),
        "adapters": count(ours.adapters),
        "qformer_with_embeddings_and_queries": qformer_ours,
        "blip2_qformer_with_embeddings_and_queries": qformer_blip2,
        "matching_head": count(ours.matching_head),
        "blip2_total": count(blip2),
        "published_qformer": PUBLISHED_QFORMER_PARAMS,
        "published_vit_g": PUBLISHED_VIT_G_PARAMS,
        "qformer_vs_published": round(qformer_ours / PUBLISHED_QFORMER_PARAMS, 4),
        "vision_vs_published": round(count(ours.vision_model) / PUBLISHED_VIT_G_PARAMS, 4),
    }


def cpu_benchmark(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = FashionBlip2Config.from_preset("demo")
    ours = FashionBlip2Model(config).train()
    blip2 = blip2_twin(config).train()
    batch = make_batch(config, args.batch_size, args.text_length)
    log(f"demo preset, batch {args.batch_size}, {torch.get_num_threads()} thread(s): FashionBlip2Model vs BLIP-2 ITC")
    steps = {"fashionblip2": lambda: ours_step(ours, batch), "blip2_itc": lambda: blip2_step(blip2, batch)}
    times = paired_times(steps, args.steps)
    ratios = [a / b for a, b in zip(times["fashionblip2"], times["blip2_itc"])]
    flops = {name: step_flops(step) for name, step in steps.items()}
    log(f"CPU seconds per step: {times}; FLOPs: {flops}")
    memory = {}
    for frozen in (True, False):
        torch.manual_seed(0)
        model = FashionBlip2Model(FashionBlip2Config.from_preset("demo", freeze_vision=frozen)).train()
        memory["frozen" if frozen else "unfrozen"] = training_step_bytes(model, batch)
    log(f"training-step bytes: {memory}")
    log("blip2-vit-g parameter counts on the meta device")
    counts = parameter_counts()
    return {
        "ratio_vs_blip2_itc": round(statistics.median(ratios), 3),
        "target_ratio": 1.3,
        "demo_step_cpu_seconds": round(statistics.median(times["fashionblip2"]), 4),
        "blip2_itc_step_cpu_seconds": round(statistics.median(times["blip2_itc"]), 4),
        "flop_ratio_vs_blip2_itc": round(flops["fashionblip2"] / flops["blip2_itc"], 3),
        "demo_step_gflop": round(flops["fashionblip2"] / 1e9, 3),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "memory_frozen_vs_unfrozen": round(memory["frozen"]["total_bytes"] / memory["unfrozen"]["total_bytes"], 3),
        "memory_bytes": memory,
        "blip2_vit_g_params": counts,
    }


def device_benchmark(args) -> dict:
    """bf16-autocast training steps of a random `args.preset` model on `args.device` (a GPU in practice)."""
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    config = FashionBlip2Config.from_preset(args.preset)
    with device:
        torch.manual_seed(0)
        model = FashionBlip2Model(config).train()
    if config.freeze_vision:
        model.vision_model.to(torch.bfloat16)  # frozen: no fp32 master copy needed
    model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    results = {
        "device": torch.cuda.get_device_name() if on_cuda else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "activation_checkpointing": True,
        "batches": {},
    }
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        try:
            results["batches"][batch_size] = timed_training(model, optimizer, config, batch_size, args.steps, device)
        except torch.OutOfMemoryError:
            results["batches"][batch_size] = "out of memory"
        except Exception as error:  # keep the numbers of the other batch sizes; say what went wrong
            results["batches"][batch_size] = f"error: {type(error).__name__}: {error}"[:500]
        log(f"batch {batch_size}: {results['batches'][batch_size]}")
        if on_cuda:
            torch.cuda.empty_cache()
    return results


def timed_training(model, optimizer, config, batch_size: int, steps: int, device: torch.device) -> dict:
    on_cuda = device.type == "cuda"
    batch = make_batch(config, batch_size, 32, device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 2):  # two warm-up steps
        if on_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_cuda:
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "step_seconds": round(seconds, 4),
        "triplets_per_second": round(batch_size / seconds, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_cuda else None,
        "loss": round(loss.item(), 4),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    result = device_benchmark(args) if args.device else cpu_benchmark(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
