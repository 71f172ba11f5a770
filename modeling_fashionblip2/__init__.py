"""FashionBLIP-2 for fashion composed image retrieval. Importing this package registers the Auto classes for
`model_type="fashionblip2"`; saved folders also load without it through `trust_remote_code=True`.

This `__init__` is not part of the remote code: only the flat modules it imports are copied next to the weights.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_fashionblip2 import MATCHING_MODES, PRESETS, FashionBlip2Config
from .convert import ConversionError
from .loading import ModelLoadError, load_pretrained
from .modeling_fashionblip2 import (
    ContrastiveLoss,
    FashionBlip2Model,
    FashionBlip2Output,
    FashionBlip2PreTrainedModel,
    gather_with_grad,
    score_embeddings,
)
from .pipeline_fashionblip2 import PIPELINE_TASK, ComposedImageRetrievalPipeline
from .processing_fashionblip2 import (
    FASHIONIQ_TARGET_PAD_RATIO,
    FashionBlip2Processor,
    build_wordpiece_vocab,
    target_pad,
)

AutoConfig.register(FashionBlip2Config.model_type, FashionBlip2Config, exist_ok=True)
AutoModel.register(FashionBlip2Config, FashionBlip2Model, exist_ok=True)
AutoProcessor.register(FashionBlip2Config, FashionBlip2Processor, exist_ok=True)
# `save_pretrained` then writes `auto_map` and copies the flat modules, so the folder loads without this package.
FashionBlip2Config.register_for_auto_class()
FashionBlip2Model.register_for_auto_class("AutoModel")
FashionBlip2Processor.register_for_auto_class("AutoProcessor")
# In-process `pipeline("composed-image-retrieval", model=model_object, processor=...)`; saved folders name the
# pipeline in their config instead (`custom_pipelines`), which needs no registration.
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=ComposedImageRetrievalPipeline, pt_model=AutoModel, type="multimodal"
)

__all__ = [
    "ComposedImageRetrievalPipeline",
    "ContrastiveLoss",
    "ConversionError",
    "FASHIONIQ_TARGET_PAD_RATIO",
    "FashionBlip2Config",
    "FashionBlip2Model",
    "FashionBlip2Output",
    "FashionBlip2PreTrainedModel",
    "FashionBlip2Processor",
    "MATCHING_MODES",
    "PIPELINE_TASK",
    "ModelLoadError",
    "PRESETS",
    "build_wordpiece_vocab",
    "load_pretrained",
    "gather_with_grad",
    "score_embeddings",
    "target_pad",
]
