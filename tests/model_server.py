"""A stand-in for vLLM's OpenAI-compatible API, for tests only: the real packaged model (through the transformers
backend) answers `/v1/models` and `/v1/completions` (token-id prompts, `logprobs`, `prompt_logprobs`) in vLLM's
response shape, with faults injected in front: HTTP errors, slow answers, refused connections. The real vLLM server
is exercised by tests/test_vllm.py when its environment exists.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from tasks.config import Sampling


class ModelServer:
    def __init__(self, backend, name: str):
        self.backend, self.name = backend, name
        self.faults: list[str] = []  # consumed one per completion request: "503", "slow:<seconds>"
        self.down_after: int | None = None  # completions answered before every later one gets a 503
        self.completions = 0
        self.authorizations: set[str] = set()  # Authorization headers seen
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next_fault(self) -> str | None:
        with self.lock:
            if self.down_after is not None and self.completions >= self.down_after:
                return "503"
            self.completions += 1
            return self.faults.pop(0) if self.faults else None

    def answer(self, body: dict) -> dict:
        ids = body["prompt"]
        with self.lock:  # one forward pass at a time: the model is not thread-safe
            if "prompt_logprobs" in body:
                return {"choices": [{"prompt_logprobs": self._prompt_logprobs(ids)}]}
            sampling = Sampling(temperature=body["temperature"], top_p=body["top_p"], max_new_tokens=body["max_tokens"])
            generation = self.backend._generate_batch([ids], sampling, [body["seed"]], None)[0]
        tokens = [f"token_id:{t}" for t in generation.token_ids]
        logprobs = {"tokens": tokens, "token_logprobs": generation.token_logprobs}
        return {"choices": [{"logprobs": logprobs, "finish_reason": "stop" if generation.finished else "length"}]}

    @torch.inference_mode()
    def _prompt_logprobs(self, ids: list[int]) -> list:
        logits = self.backend.model(input_ids=torch.tensor([ids])).logits[0]
        logprobs = torch.log_softmax(logits.float(), -1)
        return [None] + [{str(t): {"logprob": logprobs[i - 1, t].item()}} for i, t in enumerate(ids) if i > 0]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first (a timeout test)
                    pass

            def do_GET(self) -> None:
                self._send(200, {"data": [{"id": server.name}]})

            def do_POST(self) -> None:
                server.authorizations.add(self.headers.get("Authorization", ""))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fault = server._next_fault()
                if fault == "503":
                    return self._send(503, {"error": "injected: server overloaded"})
                if fault and fault.startswith("slow:"):
                    time.sleep(float(fault.split(":")[1]))
                self._send(200, server.answer(body))

        return Handler
