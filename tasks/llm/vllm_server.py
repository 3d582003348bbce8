"""Managed vLLM servers: one `vllm` OpenAI-compatible server per model version, in vLLM's own environment.

vLLM cannot share the flywheel's environment (it pins fastapi and transformers versions Prefect cannot use), so it
runs as a server from `model.server.venv` (`make vllm`) on 127.0.0.1 and a free port, serving the registered model's
folder under `served_name(ref)`. At most `max_servers` run at once: asking for a new model version (the champion
after a promotion) stops the least recently used one. Servers run in their own process group and are stopped by PID
when the process that started them exits. With `model.server.url` set, nobody starts anything: that server is used.
"""

from __future__ import annotations

import atexit
import os
from collections import OrderedDict

from stores.processes import free_port, start_in_group, stop_group, wait_healthy
from stores.registry import ModelRef
from tasks.config import Settings
from tasks.errors import ModelServerError
from tasks.llm.openai_backend import OpenAIBackend, served_name


class VllmServer:
    def __init__(self, ref: ModelRef, settings: Settings):
        cfg = settings.model.server
        self.ref, self.cfg = ref, cfg
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
        }
        command = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(ref.path), "--served-model-name", served_name(ref),
            "--host", cfg.host, "--port", str(self.port), "--max-model-len", str(cfg.max_model_len),
            "--seed", str(settings.seed),
            # Per-request seeds crash vllm-cpu when a sampled token is discarded and the generator rewound (chunked
            # or partial prefill, async scheduling): "CPU Generator does not use offset". Whole prefills avoid it.
            "--no-enable-chunked-prefill", "--no-async-scheduling",
            "--max-num-batched-tokens", str(max(cfg.max_model_len, 8192)),
        ]  # fmt: skip
        self.process = start_in_group(command, self.log_path, env)
        health = self.url.removesuffix("/v1") + "/health"
        wait_healthy(f"vLLM server for {ref.label}", health, self.process.pid, self.log_path,
                     cfg.start_timeout_s, ModelServerError)  # fmt: skip

    def stop(self) -> None:
        """Stop the whole process group (the API server and its engine process) and reap it."""
        stop_group(self.process.pid)
        self.process.wait()


_running: OrderedDict[str, VllmServer] = OrderedDict()


def vllm_backend(ref: ModelRef, settings: Settings) -> OpenAIBackend:
    """A backend for `ref` on the configured server, or on a managed server started (or reused) for it."""
    cfg = settings.model.server
    if cfg.url:
        return OpenAIBackend(ref, cfg.url, cfg)
    name = served_name(ref)
    if name not in _running:
        while len(_running) >= cfg.max_servers:
            _running.popitem(last=False)[1].stop()
        _running[name] = VllmServer(ref, settings)
    _running.move_to_end(name)
    return OpenAIBackend(ref, _running[name].url, cfg)


def stop_all() -> None:
    while _running:
        _running.popitem()[1].stop()


atexit.register(stop_all)
