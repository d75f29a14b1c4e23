"""A small transformers + PEFT server with the slice of vLLM's HTTP API tunelab uses.

For machines without vLLM: started, kept and called exactly as a vLLM server is
(`/health`, `/v1/completions` streamed or not, `/v1/load_lora_adapter`,
`/v1/unload_lora_adapter`), so nothing above the process knows which one runs. It
answers one request at a time; vLLM batches them.

    python -m tunelab.workers.gpu.serving.hf_server --model DIR --port P
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.processes import die_with_parent
from tunelab.streams import EventStream, until_disconnected


class Engine:
    def __init__(self, model_dir: str, served_name: str) -> None:
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model: Any = model.eval()
        self.served_name = served_name
        self.adapters: set[str] = set()
        self.lock = threading.Lock()

    def load(self, name: str, path: str) -> None:
        from peft import PeftModel

        with self.lock:
            if not isinstance(self.model, PeftModel):  # stays one after its last unload
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            else:
                self.model.load_adapter(path, adapter_name=name)
            self.adapters.add(name)

    def unload(self, name: str) -> None:
        with self.lock:
            self.model.delete_adapter(name)
            self.adapters.discard(name)

    def pieces(
        self, body: dict[str, Any], stop: threading.Event | None = None
    ) -> Iterator[tuple[str, str | None, int, int]]:
        """(text, finish_reason, prompt_tokens, completion_tokens) as tokens come, until
        `stop` is set (the client went away: nothing more is generated for it)."""
        from peft import PeftModel

        name = body.get("model", self.served_name)
        if name != self.served_name and name not in self.adapters:
            raise KeyError(name)
        ids = self.tokenizer(
            body["prompt"], add_special_tokens=body.get("add_special_tokens", True)
        )["input_ids"]
        stops = list(body.get("stop") or [])
        temperature = float(body.get("temperature", 1.0))
        top_p = float(body.get("top_p", 1.0))
        max_tokens = int(body.get("max_tokens", 16))
        with self.lock, torch.inference_mode():
            if isinstance(self.model, PeftModel) and self.model.peft_config:
                if name == self.served_name:
                    context: Any = self.model.disable_adapter()
                else:
                    self.model.set_adapter(name)
                    context = _nothing()
            else:
                context = _nothing()
            with context:
                for piece in self._decode(ids, stops, temperature, top_p, max_tokens):
                    yield piece
                    if stop is not None and stop.is_set():
                        return

    def _decode(
        self, ids: list[int], stops: list[str], temperature: float, top_p: float, max_tokens: int
    ) -> Iterator[tuple[str, str | None, int, int]]:
        tokens = torch.tensor([ids])
        past = None
        made: list[int] = []
        text = ""
        eos = self.tokenizer.eos_token_id
        for _ in range(max_tokens):
            out = self.model(input_ids=tokens, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
            token = int(_sample(logits, temperature, top_p))
            if token == eos:
                yield "", "stop", len(ids), len(made) + 1
                return
            made.append(token)
            full = str(self.tokenizer.decode(made, skip_special_tokens=True))
            if full.endswith("\ufffd"):
                # Part of a character's bytes: wait for the rest before showing it.
                tokens = torch.tensor([[token]])
                continue
            piece, text = full[len(text) :], full
            cut = min((text.find(s) for s in stops if s and s in text), default=-1)
            if cut >= 0:
                yield piece[: max(0, len(piece) - (len(text) - cut))], "stop", len(ids), len(made)
                return
            yield piece, None, len(ids), len(made)
            tokens = torch.tensor([[token]])
        yield "", "length", len(ids), len(made)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def _sample(logits: torch.Tensor, temperature: float, top_p: float) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    ordered, order = probs.sort(descending=True)
    keep = ordered.cumsum(0) - ordered < top_p
    ordered = ordered * keep
    return int(order[torch.multinomial(ordered / ordered.sum(), 1)])


def build_app(engine: Engine) -> Starlette:
    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def models(request: Request) -> Response:
        """The served model and its loaded adapters, as vLLM lists them."""
        names = [engine.served_name, *sorted(engine.adapters)]
        return JSONResponse(
            {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}
        )

    async def load(request: Request) -> Response:
        body = await request.json()
        try:
            await asyncio.to_thread(engine.load, body["lora_name"], body["lora_path"])
        except Exception as exc:  # the caller shows the reason beside the service
            return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        return Response("ok")

    async def unload(request: Request) -> Response:
        body = await request.json()
        if body["lora_name"] not in engine.adapters:
            return JSONResponse({"error": {"message": "no such adapter"}}, status_code=404)
        await asyncio.to_thread(engine.unload, body["lora_name"])
        return Response("ok")

    async def completions(request: Request) -> Response:
        body = await request.json()
        name = body.get("model")
        if name != engine.served_name and name not in engine.adapters:
            return JSONResponse(
                {"error": {"message": f"The model `{name}` does not exist."}}, status_code=404
            )
        rid = f"cmpl-{uuid.uuid4().hex}"
        if body.get("stream"):
            return EventStream(_stream(engine, body, rid))
        stop = threading.Event()
        try:
            pieces = await until_disconnected(
                request, asyncio.to_thread(lambda: list(engine.pieces(body, stop)))
            )
        finally:
            stop.set()
        if isinstance(pieces, Response):
            return pieces
        text = "".join(p[0] for p in pieces)
        _, reason, prompt, made = pieces[-1]
        return JSONResponse(
            {
                "id": rid,
                "object": "text_completion",
                "created": int(time.time()),
                "model": name,
                "choices": [{"index": 0, "text": text, "finish_reason": reason}],
                "usage": _usage(prompt, made),
            }
        )

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/load_lora_adapter", load, methods=["POST"]),
            Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )


def _usage(prompt: int, made: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": made, "total_tokens": prompt + made}


async def _stream(engine: Engine, body: dict[str, Any], rid: str) -> AsyncIterator[str]:
    queue: asyncio.Queue[tuple[str, str | None, int, int] | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def produce() -> None:
        try:
            for piece in engine.pieces(body, stop):
                loop.call_soon_threadsafe(queue.put_nowait, piece)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    stop = threading.Event()
    worker = asyncio.create_task(asyncio.to_thread(produce))
    last: tuple[str, str | None, int, int] | None = None
    try:
        while (piece := await queue.get()) is not None:
            last = piece
            chunk = {"id": rid, "object": "text_completion", "model": body.get("model")}
            choice = {"index": 0, "text": piece[0], "finish_reason": piece[1]}
            yield f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n"
    finally:
        stop.set()  # the client went away (or the answer is done): stop generating
    await worker
    if last is not None:
        usage = {"id": rid, "choices": [], "usage": _usage(last[2], last[3])}
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", default="base")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    die_with_parent()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    engine = Engine(args.model, args.served_model_name)
    uvicorn.run(build_app(engine), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
