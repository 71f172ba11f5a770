"""FashionBLIP-2 processor: BLIP's image processor (Pillow backend unless torchvision is installed) with the
optional Fashion IQ "target pad", and a BERT WordPiece tokenizer.

Remote-code rule: copied next to saved weights and imported without this package, so it imports only
transformers, tokenizers, PIL and the standard library.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from PIL import Image
from tokenizers import normalizers, pre_tokenizers
from transformers import BertTokenizer
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

if is_torchvision_available():
    from transformers import BlipImageProcessor as _ImageProcessor
else:
    from transformers import BlipImageProcessorPil as _ImageProcessor

# BERT's special tokens; [PAD] must be id 0 because the Q-Former's word embeddings use padding_idx=0.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Single characters and their "##" continuations let WordPiece spell out any word it has not seen whole.
_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
_PUNCTUATION = ".,!?;:'\"-()/&%+"
FASHIONIQ_TARGET_PAD_RATIO = 1.25  # CLIP4Cir/SPRC's TargetPad for Fashion IQ's tall product photos


def target_pad(image: Image.Image, ratio: float) -> Image.Image:
    """Pad the short side with black, centred, until long/short == `ratio` (images already squarer are kept)."""
    width, height = image.size
    if max(width, height) / min(width, height) < ratio:
        return image
    long_side_at_ratio = max(width, height) / ratio
    pad_x = max(int((long_side_at_ratio - width) / 2), 0)
    pad_y = max(int((long_side_at_ratio - height) / 2), 0)
    padded = Image.new(image.mode, (width + 2 * pad_x, height + 2 * pad_y))
    padded.paste(image, (pad_x, pad_y))
    return padded


def build_wordpiece_vocab(texts: Iterable[str], vocab_size: int | None = None) -> dict[str, int]:
    """Vocabulary of BERT's special tokens, single characters (+ "##" pieces) and the whole words of `texts`
    (most frequent first, ties alphabetical), cut to `vocab_size` entries if given."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    tokens = list(SPECIAL_TOKENS) + list(_CHARACTERS + _PUNCTUATION) + [f"##{c}" for c in _CHARACTERS]
    if vocab_size is not None and vocab_size < len(tokens):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the {len(tokens)} special and character tokens")
    known = set(tokens)
    words = sorted((w for w in counts if w not in known), key=lambda w: (-counts[w], w))
    tokens += words if vocab_size is None else words[: vocab_size - len(tokens)]
    return {token: index for index, token in enumerate(tokens)}


class FashionBlip2Processor(ProcessorMixin):
    r"""
    Prepares FashionBLIP-2 inputs: `processor(images=..., text=..., return_tensors="pt")` gives `pixel_values`
    and/or `input_ids` + `attention_mask` (padded to the longest text, truncated to `max_text_length`).

    image_processor (`BlipImageProcessor` / `BlipImageProcessorPil`): resize, rescale, normalise.
    tokenizer (`BertTokenizer`): WordPiece tokenizer of the Q-Former.
    max_text_length (`int`): texts are truncated to this many tokens (the model refuses longer input).
    target_pad_ratio (`float`, *optional*): Fashion IQ's "target pad" (1.25): pad the short side of an image up to
        this aspect ratio before the square resize, so tall product photos are not squashed. `None` disables it.
    """

    def __init__(self, image_processor, tokenizer, max_text_length: int = 64, target_pad_ratio: float | None = None):
        if target_pad_ratio is not None and target_pad_ratio < 1:
            raise ValueError(f"target_pad_ratio={target_pad_ratio!r} must be >= 1 (or None to disable)")
        if max_text_length < 2:
            raise ValueError(f"max_text_length={max_text_length!r} must leave room for [CLS] and [SEP]")
        self.max_text_length = max_text_length
        self.target_pad_ratio = target_pad_ratio
        super().__init__(image_processor, tokenizer)

    def __call__(
        self,
        images: Image.Image | Sequence[Image.Image] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = "longest",
        truncation: bool = True,
        max_length: int | None = None,
    ) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("give images, text or both")
        data = {}
        if images is not None:
            data.update(self.process_images(images, return_tensors=None))
        if text is not None:
            data.update(self.process_text(text, padding=padding, truncation=truncation, max_length=max_length))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def process_images(self, images, return_tensors: str | None = "pt") -> BatchFeature:
        """`pixel_values` of shape `(batch_size, 3, size, size)`; applies the target pad when configured."""
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("images is empty")
        if self.target_pad_ratio is not None:
            for index, image in enumerate(images):
                if not isinstance(image, Image.Image):
                    raise TypeError(f"target pad needs PIL images; image {index} is {type(image).__name__}")
            images = [target_pad(image, self.target_pad_ratio) for image in images]
        return self.image_processor(images, return_tensors=return_tensors)

    def process_text(
        self,
        text: str | Sequence[str],
        return_tensors: str | None = None,
        padding: bool | str = "longest",
        truncation: bool = True,
        max_length: int | None = None,
    ) -> BatchFeature:
        """`input_ids` and `attention_mask`, padded to the longest text and truncated to `max_text_length` (or a
        smaller `max_length`)."""
        if isinstance(text, str):
            text = [text]
        text = list(text)
        if not text or not all(isinstance(t, str) for t in text):
            raise ValueError("text must be a string or a non-empty list of strings")
        max_length = self.max_text_length if max_length is None else max_length
        if max_length > self.max_text_length:
            raise ValueError(f"max_length={max_length} exceeds this processor's max_text_length={self.max_text_length}")
        encoded = self.tokenizer(
            text,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_token_type_ids=False,
            return_tensors=return_tensors,
        )
        return BatchFeature(data=dict(encoded), tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]

    @classmethod
    def from_blip2(
        cls,
        path_or_id: str,
        *,
        max_text_length: int = 64,
        target_pad_ratio: float | None = None,
        **loading_options,
    ) -> "FashionBlip2Processor":
        """The processor of a model made by `FashionBlip2Model.from_blip2`: the BLIP-2 checkpoint's own tokenizer
        and image processor (e.g. those of `Salesforce/blip2-itm-vit-g`)."""
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path_or_id, **loading_options)
        image_processor = AutoImageProcessor.from_pretrained(path_or_id, **loading_options)
        return cls(image_processor, tokenizer, max_text_length=max_text_length, target_pad_ratio=target_pad_ratio)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        *,
        image_size: int = 224,
        max_text_length: int = 64,
        target_pad_ratio: float | None = None,
        vocab_size: int | None = None,
    ) -> "FashionBlip2Processor":
        """Build a processor offline: a WordPiece tokenizer whose vocabulary is the special tokens, single
        characters and the words of `texts` (see `build_wordpiece_vocab`), and a square `image_size` image
        processor with BLIP's (CLIP's) mean/std. The model's `qformer_config.vocab_size` must be at least
        `len(processor.tokenizer)`."""
        tokenizer = BertTokenizer(vocab=build_wordpiece_vocab(texts, vocab_size), model_max_length=max_text_length)
        image_processor = _ImageProcessor(size={"height": image_size, "width": image_size})
        return cls(image_processor, tokenizer, max_text_length=max_text_length, target_pad_ratio=target_pad_ratio)


__all__ = ["FashionBlip2Processor", "build_wordpiece_vocab", "target_pad", "FASHIONIQ_TARGET_PAD_RATIO"]
