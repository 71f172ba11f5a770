"""Local generation with transformers pipelines: `image-text-to-text` (stage 1) and `text-generation`
(stage 2), batched, on any device.

Chat models (whose processor or tokenizer has a chat template) get the prompt as a user message; other
models get it as plain text (for captioners such as BLIP it is a prefix to continue).
"""

from __future__ import annotations

from typing import Any, Sequence

from .backends import BackendError, Reply, Request

TASKS = ("image-text-to-text", "text-generation")
# Retries of an invalid answer sample instead of decoding greedily, so they can give a different answer.
RETRY_SAMPLING = {"do_sample": True, "temperature": 0.9, "top_p": 0.95}


class TransformersBackend:
    concurrency = 1

    def __init__(
        self,
        task: str,
        model: str,
        *,
        batch_size: int = 8,
        device: str | None = None,
        max_new_tokens: int = 256,
    ):
        if task not in TASKS:
            raise BackendError(f"unknown generation task {task!r}; expected one of {', '.join(TASKS)}")
        if batch_size < 1:
            raise BackendError(f"batch size must be >= 1, got {batch_size}")
        from transformers import pipeline

        self.task = task
        self.model = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        try:
            self.pipe = pipeline(task, model=model, device=device)
        except (OSError, ValueError, KeyError) as error:
            raise BackendError(f"cannot load model {model!r} for {task} (offline?): {error}") from error
        tokenizer = self.pipe.tokenizer
        if tokenizer is not None and not self.pipe.model.config.is_encoder_decoder:
            # Decoder-only models continue the last token of each row: batched prompts must be left-padded.
            tokenizer.padding_side = "left"
        templated = self.pipe.processor if task == "image-text-to-text" else tokenizer
        self.chat = getattr(templated, "chat_template", None) is not None

    def generate(self, requests: Sequence[Request], attempt: int) -> list[Reply]:
        options: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "return_full_text": False,
            "batch_size": self.batch_size,
        }
        options.update(RETRY_SAMPLING if attempt else {"do_sample": False})
        outputs = self.pipe(**self._inputs(requests), **options)
        return [Reply(text=_generated_text(output)) for output in outputs]

    def _inputs(self, requests: Sequence[Request]) -> dict[str, Any]:
        if self.task == "text-generation":
            if self.chat:
                return {"text_inputs": [[{"role": "user", "content": r.text}] for r in requests]}
            return {"text_inputs": [r.text for r in requests]}
        if any(r.image is None for r in requests):
            raise BackendError("the image-text-to-text backend was given a request without an image")
        if self.chat:
            return {
                "text": [
                    [{"role": "user", "content": [{"type": "image", "image": r.image}, {"type": "text", "text": r.text}]}]
                    for r in requests
                ]
            }
        return {"images": [r.image for r in requests], "text": [r.text for r in requests]}

    def close(self) -> None:
        self.pipe = None


def _generated_text(output: Any) -> str:
    """A pipeline gives a dict per input, or a list of one dict per input (one sequence each here)."""
    if isinstance(output, list):
        output = output[0]
    text = output["generated_text"]
    if not isinstance(text, str):
        # Chat mode with return_full_text=False still returns the assistant message on some versions.
        text = text[-1]["content"] if isinstance(text, list) else str(text)
    return text
