"""adstream's settings: the runtime's tables plus one per role (see ``adstream config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.config import ActorSection, KafkaSection, LogSection
from pipeline.metrics import MetricsSection


@dataclass
class TopicsSection:
    requests: str = "ads.requests"  # ScoreRequests, keyed by user id
    features: str = "ads.features"  # FeatureChunks, keyed by request id and chunk
    scores: str = "ads.scores"  # ScoreChunks, keyed by request id
    results: str = "ads.results"  # ScoreResults (unless a request names its reply_to)
    dlq: str = "ads.dlq"  # DeadLetters: what could not be processed, and why
    changelog: str = "ads.aggregator.changelog"  # answered request ids (exactly-once only)
    partitions: int = 8  # used by `adstream topics create`
    replication: int = 1  # replication factor for `adstream topics create`


@dataclass
class FeaturesSection:
    chunk_rows: int = 256  # candidates per FeatureChunk; large requests fan out
    spec: str = ""  # feature spec TOML; empty = the bundled default
    default_timeout_ms: int = 10_000  # deadline for requests that carry none
    max_candidates: int = 10_000
    key: str = "request"  # key of FeatureChunks/ScoreChunks: request (spread) or user (ordered)

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"key": ("request", "user")}


@dataclass
class ScorerSection:
    model_repo: str = "models"  # Triton-style repository: <name>/<version>/model.onnx
    model: str = "ctr"  # model name in the repository
    version: int = 0  # 0 = the highest version in the repository
    backend: str = ""  # empty = the model's config.toml; onnxruntime or cupy
    max_batch_rows: int = 0  # 0 = the model's config.toml
    max_wait_ms: float = -1.0  # <0 = the model's config.toml
    instances: int = 0  # model instances (threads); 0 = the model's config.toml
    intra_op_threads: int = 0  # onnxruntime threads per instance; 0 = the model's config.toml
    precision: str = "float32"  # cupy: float32 or float16 (weights and activations)
    cuda_graphs: bool = False  # cupy: pad batches to preferred sizes and replay CUDA graphs
    gpu_pool_fraction: float = 0.8  # cupy: device memory pool limit, fraction of the GPU


@dataclass
class AggregatorSection:
    dedupe_capacity: int = 200_000  # finished request ids remembered to drop duplicate chunks
    tick_ms: int = 5  # how often deadlines are checked


@dataclass
class Settings:
    kafka: KafkaSection = field(default_factory=KafkaSection)
    topics: TopicsSection = field(default_factory=TopicsSection)
    actor: ActorSection = field(default_factory=ActorSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    scorer: ScorerSection = field(default_factory=ScorerSection)
    aggregator: AggregatorSection = field(default_factory=AggregatorSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    log: LogSection = field(default_factory=LogSection)
