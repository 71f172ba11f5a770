"""The two-stage annotation pipeline: pair mining, stage-1 VLM captions, stage-2 LLM
modification texts, and the enhFashionIQ run, with resumable caching and output validation."""

from .backends import Backend, BackendError, BackendOptions, Reply, Request, make_backend
from .cache import AnnotationCache, CacheError, cache_key
from .pairs import MinedPair, MiningOptions, mine_pairs, write_pairs
from .prompts import BUILTIN_TEMPLATES, PromptError, PromptTemplate, load_template
from .runner import Job, RunSettings, RunSummary, run_jobs
from .sources import DatasetImages, FolderImages, Pair, read_captions, read_pairs
from .stages import StageRun, annotate_captions, annotate_modifications, enhance_fashioniq
from .validate import CAPTION_RULES, MODIFICATION_RULES, OutputRules, check_output

__all__ = [
    "AnnotationCache", "Backend", "BackendError", "BackendOptions", "BUILTIN_TEMPLATES", "CAPTION_RULES",
    "CacheError", "DatasetImages", "FolderImages", "Job", "MODIFICATION_RULES", "MinedPair", "MiningOptions",
    "OutputRules", "Pair", "PromptError", "PromptTemplate", "Reply", "Request", "RunSettings", "RunSummary",
    "StageRun", "annotate_captions", "annotate_modifications", "cache_key", "check_output", "enhance_fashioniq",
    "load_template", "make_backend", "mine_pairs", "read_captions", "read_pairs", "run_jobs", "write_pairs",
]
