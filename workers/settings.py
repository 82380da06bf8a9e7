"""adstream's settings: the runtime's tables plus one per role (see ``adstream config``).

Each setting's allowed values are declared on its field (``setting(default, ge=...)``);
loading refuses anything else and the README's configuration reference shows the same.
Settings are frozen once made (other values: ``pipeline.config.amended``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import ActorSection, KafkaSection, LogSection
from pipeline.metrics import MetricsSection
from pipeline.setting_rules import setting
from pipeline.tracing import TracingSection
from workers.scoring.backend_names import BACKENDS


@dataclass(frozen=True)
class TopicsSection:
    requests: str = setting("ads.requests", nonempty=True)  # ScoreRequests, keyed by user id
    features: str = setting("ads.features", nonempty=True)  # FeatureChunks, keyed by request id and chunk
    scores: str = setting("ads.scores", nonempty=True)  # ScoreChunks, keyed by request id
    results: str = setting("ads.results", nonempty=True)  # ScoreResults (unless a request names its reply_to)
    dlq: str = setting("ads.dlq", nonempty=True)  # DeadLetters: what could not be processed, and why
    changelog: str = setting("ads.aggregator.changelog", nonempty=True)  # answered request ids (exactly-once only)
    partitions: int = setting(8, ge=1)  # used by `adstream topics create`
    replication: int = setting(1, ge=1, le=32767)  # replication factor for `adstream topics create`


@dataclass(frozen=True)
class FeaturesSection:
    chunk_rows: int = setting(256, ge=1)  # candidates per FeatureChunk; large requests fan out
    spec: str = ""  # feature spec TOML; empty = the bundled default
    default_timeout_ms: int = setting(10_000, ge=1)  # deadline for requests that carry none
    max_candidates: int = setting(10_000, ge=1)  # larger requests are rejected
    key: str = setting("request", choices=("request", "user"))  # key of FeatureChunks/ScoreChunks: request (spread) or user (ordered)


@dataclass(frozen=True)
class ScorerSection:
    model_repo: str = setting("models", nonempty=True)  # Triton-style repository: <name>/<version>/model.onnx
    model: str = setting("ctr", nonempty=True)  # model name in the repository
    version: int = setting(0, ge=0)  # 0 = the highest version the model's version policy serves; N = pin version N
    poll_s: float = setting(0.0, ge=0)  # how often the scorer re-reads the repository to load/unload versions (hot swap); 0 = never
    backend: str = setting("", choices=("", *BACKENDS))  # empty = the model's config.toml
    max_batch_rows: int = setting(0, ge=0)  # 0 = the model's config.toml
    max_wait_ms: float = -1.0  # <0 = the model's config.toml
    instances: int = setting(0, ge=0)  # model instances (threads); 0 = the model's config.toml
    intra_op_threads: int = setting(0, ge=0)  # onnxruntime threads per instance; 0 = the model's config.toml
    precision: str = setting("float32", choices=("float32", "float16"))  # cupy: weights and activations
    cuda_graphs: bool = False  # cupy: pad batches to preferred sizes and replay CUDA graphs
    ab_version: int = setting(0, ge=0)  # A/B: another version of the model for ab_fraction of users (sticky by user id hash); 0 = off
    ab_fraction: float = setting(0.0, ge=0, le=1)  # A/B: the fraction of users ab_version scores
    shadow_version: int = setting(0, ge=0)  # a version that also scores a sample of batches off the hot path, reporting the score difference; 0 = off
    shadow_every: int = setting(10, ge=1)  # the shadow version scores one submission in this many
    spill_backend: str = setting("", choices=("", *BACKENDS))  # empty = no spill; else batches go to instances of this backend while the queue stays over spill_queue_rows
    spill_instances: int = setting(1, ge=1)  # spill backend instances (threads)
    spill_queue_rows: int = setting(0, ge=0)  # spill bound in queued rows; 0 = max_batch_rows
    spill_after_ms: float = setting(5.0, ge=0)  # how long the queue must stay over the bound before a batch spills
    gpu_pool_fraction: float = setting(0.8, gt=0, le=1)  # cupy: device memory pool limit, fraction of the GPU


@dataclass(frozen=True)
class AggregatorSection:
    dedupe_capacity: int = setting(200_000, ge=1)  # finished request ids remembered to drop duplicate chunks
    tick_ms: int = setting(5, ge=1)  # how often deadlines are checked


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSection = field(default_factory=KafkaSection)
    topics: TopicsSection = field(default_factory=TopicsSection)
    actor: ActorSection = field(default_factory=ActorSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    scorer: ScorerSection = field(default_factory=ScorerSection)
    aggregator: AggregatorSection = field(default_factory=AggregatorSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    log: LogSection = field(default_factory=LogSection)
    tracing: TracingSection = field(default_factory=TracingSection)
