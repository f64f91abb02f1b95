"""The run's settings outside the parts: one dataclass per section of the config (`retrieval.*`,
`questions.*`, ...). They are the single source of every default: `visa.config.VisaConfig` (the Hydra
schema) is built from them, and their checks run when a run builds them from its config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from visa.cache.gallery import DTYPES
from visa.core.errors import VisaError
from visa.method.prompts import QUESTION_PROMPTS
from visa.method.retrieval import check_index
from visa.method.shard import Shard

GALLERY_STORE = ("auto", "on", "off")
LAUNCHERS = ("none", "ray", "slurm", "local")  # visa.method.cluster_encode
ANSWER_MODES = ("per_question", "per_candidate")


@dataclass
class RetrievalSettings:
    top_k: int = 20  # K: candidates per query that the re-ranker sees
    chunk_size: int = 1024  # queries scored per block in the top-K search
    gallery_chunk_size: int = 16384  # gallery items per block (torch index)
    # exact: torch (chunked) or faiss (flat inner product); approximate (the faiss extra; docs/scaling.md):
    # hnsw, ivf_flat, ivf_pq, or faiss:<a FAISS index_factory string>, e.g. faiss:IVF4096,PQ64
    index: str = "torch"
    device: str = "cpu"  # where the torch index scores blocks: cpu, cuda, cuda:1, auto
    # The gallery's embeddings as memory-mapped shards on disk (visa.cache.gallery) instead of cache rows:
    # auto: for galleries of gallery_store_min items or more; on; off (every gallery in the results cache)
    gallery_store: str = "auto"
    gallery_store_min: int = 100000
    gallery_dtype: str = "float16"  # float16 | float32: how the store keeps the embeddings
    gallery_shard_size: int = 32768  # items per shard file (a crash loses at most the shards being written)
    # the store's missing shards encoded by workers: none (this process) | ray | slurm | local (submitit)
    gallery_launcher: str = "none"
    gallery_workers: int = 8  # Ray tasks / SLURM array jobs
    gallery_rounds: int = 2  # shards a dead worker left are dealt out again this many times at most
    gallery_executor: dict[str, Any] = field(
        default_factory=dict
    )  # Ray / submitit settings (docs/scaling.md)
    # approximate indexes' settings (0: chosen from the gallery's size and dimension)
    nprobe: int = 16  # IVF lists searched per query
    ef_search: int = 256  # HNSW candidate list while searching
    hnsw_m: int = 32  # HNSW links per node (build time and memory grow with it)
    nlist: int = 0  # IVF lists; 0: 4 x sqrt(items)
    pq_m: int = 0  # IVF-PQ sub-quantisers (bytes per item); 0: dimension / 8
    train_size: int = 200000  # IVF training sample (items)
    ann_recall_queries: int = 100  # queries whose exact top-K checks the approximate one; 0: no check

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise VisaError(f"retrieval.top_k={self.top_k} must be at least 1")
        if self.chunk_size < 1:
            raise VisaError(f"retrieval.chunk_size={self.chunk_size} must be at least 1 (default 1024)")
        check_index(self.index)
        if self.gallery_store not in GALLERY_STORE:
            raise VisaError(
                f"retrieval.gallery_store={self.gallery_store!r} is not one of {', '.join(GALLERY_STORE)}"
            )
        if self.gallery_launcher not in LAUNCHERS:
            raise VisaError(
                f"retrieval.gallery_launcher={self.gallery_launcher!r} is not one of {', '.join(LAUNCHERS)}"
            )
        if self.gallery_dtype not in DTYPES:
            raise VisaError(
                f"retrieval.gallery_dtype={self.gallery_dtype!r} is not one of {', '.join(DTYPES)}"
            )
        for key in (
            "gallery_store_min",
            "gallery_shard_size",
            "gallery_workers",
            "gallery_rounds",
            "nprobe",
            "ef_search",
            "hnsw_m",
            "train_size",
        ):
            if getattr(self, key) < 1:
                raise VisaError(f"retrieval.{key}={getattr(self, key)} must be at least 1")
        for key in ("nlist", "pq_m", "ann_recall_queries"):
            if getattr(self, key) < 0:
                raise VisaError(f"retrieval.{key}={getattr(self, key)} must be 0 (automatic / off) or more")

    def uses_store(self, gallery_size: int) -> bool:
        """Whether a gallery of this size goes to the gallery store."""
        if self.gallery_store == "auto":
            return gallery_size >= self.gallery_store_min
        return self.gallery_store == "on"


@dataclass
class QuestionsSettings:
    num: int = 3  # questions used per query
    max: int = 3  # questions generated per query (a sweep over num reuses them)
    retries: int = 2  # re-asks of a query whose reply does not parse, each with a new seed, then fallback
    retry_temperature: float = 0.2  # retries sample at this temperature (the reference re-samples at 0.2)
    # the question writer's prompt: paper | instructions (paper without its example) | fewshot (small models)
    prompt: str = "paper"
    # The reply is generated in the method's layout (structured generation: a grammar for transformers
    # models, the server's JSON schema or regex), so it always parses; false: free sampling, parsed and
    # re-asked when it does not parse (the reference's procedure, kept by the paper's experiment files).
    constrained: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.num <= self.max:
            raise VisaError(f"questions.num={self.num} must be between 0 and questions.max={self.max}")
        if self.prompt not in QUESTION_PROMPTS:
            raise VisaError(f"questions.prompt={self.prompt!r} is not one of {', '.join(QUESTION_PROMPTS)}")
        if self.retries < 0 or self.retry_temperature < 0:
            raise VisaError(
                f"questions.retries={self.retries} and questions.retry_temperature={self.retry_temperature} "
                "must be >= 0"
            )


@dataclass
class AnswersSettings:
    # per_question: one MLLM call per (candidate, question), as the method does;
    # per_candidate: one call per candidate answering all its questions (the item is encoded once)
    mode: str = "per_question"

    def __post_init__(self) -> None:
        if self.mode not in ANSWER_MODES:
            raise VisaError(f"answers.mode={self.mode!r} is not one of {', '.join(ANSWER_MODES)}")


@dataclass
class PassageSettings:
    # between the answers and the description in the re-ranker's passage; "" concatenates them as the
    # reference does ("A dog.It is brown.A park.")
    separator: str = ""


@dataclass
class Settings:
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    questions: QuestionsSettings = field(default_factory=QuestionsSettings)
    answers: AnswersSettings = field(default_factory=AnswersSettings)
    passage: PassageSettings = field(default_factory=PassageSettings)
    shard: Shard = field(default_factory=Shard)  # a sharded run: this run's 1/N of each stage
    recall_at: list[int] = field(default_factory=lambda: [1, 5, 10])
    progress: bool = True  # progress bars per stage
    # the per-query records in the run folder, written as a stream; results.jsonl.gz: gzip-compressed
    results_file: str = "results.jsonl"

    def __post_init__(self) -> None:
        if not self.recall_at or min(self.recall_at) < 1:
            raise VisaError(f"recall_at={list(self.recall_at)} must list cut-offs of 1 or more, e.g. [1,5]")
        name = self.results_file
        if "/" in name or not name.endswith((".jsonl", ".jsonl.gz")) or name.startswith("."):
            raise VisaError(
                f"results_file={name!r} must be a file name ending in .jsonl, or .jsonl.gz for a compressed "
                "file (it is written in the run folder)"
            )

    @property
    def depth(self) -> int:
        """How many ranked candidates a query keeps: K, or more when a recall cut-off is larger."""
        return max(self.retrieval.top_k, *self.recall_at)
