"""Triton python-backend model: ONNX Runtime on CPU behind the same I/O as the GPU engines.

Copied into the repository as `<model>/<version>/model.py` (the stub runs it in its own process). It
imports only numpy, onnxruntime, the backend's own utilities and `run_plan` (copied beside it). All
requests of one `execute` call are merged into one set of rows, sorted by true length and run in the
padded runs `run_plan.plan_runs` picks (fewest padded tokens at a price per call): padding, not the
model, decides CPU throughput, and a gateway's batch holds sentences in arrival order, of every length.
The runs of a batch of several rows are shared among `intra_op_threads` single-thread workers, each
pulling the next run from one queue (`run_plan.share_runs` and `dearest_first` say why); a batch of one
row runs on a session with that many intra-op threads.
Token models take every int64 input the config names (a cross-encoder adds `token_type_ids`); each
request's rows go back shaped as the config's output dims (a reranker's [n] scores as [n, 1]).
"""

from __future__ import annotations

import collections
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from .run_plan import dearest_first, plan_runs, share_runs

MAX_ROWS_PER_RUN = 64


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(
            args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx")
        )
        self.threads = int(params.get("intra_op_threads", "2"))
        # spinning threads burn the cores the gateway and the stub need between runs (measured: 401 -> 437
        # sentences/s for Triton alone on 2 cores with spinning off)
        spinning = params.get("allow_spinning", "0")
        self.session = self._session(path, self.threads, spinning)
        self.input_names = [i["name"] for i in config["input"]]
        self.output_name = config["output"][0]["name"]
        self.output_dims = [int(d) for d in config["output"][0]["dims"]]  # per row, as clients see it
        self.is_text = self.input_names[0] == "input_ids"
        self.max_tokens = int(params.get("max_batch_tokens", "8192"))
        # a model may ignore a token input (token_type_ids of a reranker that has none): not fed then
        self.feeds = {i.name for i in self.session.get_inputs()}
        # a second, single-thread session (the weights twice in memory) for batches shared among workers
        shared = self.is_text and self.threads > 1 and params.get("share_runs", "1") == "1"
        self.single = self._session(path, 1, spinning) if shared else None
        self.workers = ThreadPoolExecutor(self.threads, "run") if shared else None

    @staticmethod
    def _session(path: str, threads: int, spinning: str) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    def _run(self, feeds: dict[str, np.ndarray], session: ort.InferenceSession | None = None) -> np.ndarray:
        return (session or self.session).run([self.output_name], feeds)[0]

    def finalize(self) -> None:
        if self.workers is not None:
            self.workers.shutdown()

    def _text(self, arrays: list[tuple[np.ndarray, ...]]) -> np.ndarray:
        """Merge ragged requests, sort rows by length, run in chunks under the token budget."""
        total = sum(tensors[0].shape[0] for tensors in arrays)
        if len(arrays) == 1:  # one gateway's batch (the usual case): already padded and sorted, no copy
            merged = np.stack(arrays[0]) if len(arrays[0]) > 1 else arrays[0][0][None]
        else:  # several gateway processes' batches in one execute: one padded block
            width = max(tensors[0].shape[1] for tensors in arrays)
            merged = np.zeros((len(self.input_names), total, width), dtype=np.int64)
            row = 0
            for tensors in arrays:
                n, length = tensors[0].shape
                merged[:, row : row + n, :length] = np.stack(tensors)
                row += n
        lengths = merged[self.input_names.index("attention_mask")].sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        runs = plan_runs(lengths[order], MAX_ROWS_PER_RUN, self.max_tokens)

        def run(start: int, stop: int, session: ort.InferenceSession) -> tuple[np.ndarray, np.ndarray]:
            idx = order[start:stop]
            longest = max(int(lengths[idx[0]]), 1)
            feeds = {n: merged[k, idx, :longest] for k, n in enumerate(self.input_names) if n in self.feeds}
            return idx, self._run(feeds, session)

        if self.workers is None or self.single is None or total == 1:
            results = [run(start, stop, self.session) for start, stop in runs]
        else:
            queue = collections.deque(
                dearest_first(share_runs(runs, lengths[order], self.threads), lengths[order])
            )
            single = self.single

            def pull(_: int) -> list[tuple[np.ndarray, np.ndarray]]:
                done: list[tuple[np.ndarray, np.ndarray]] = []
                while True:
                    try:
                        start, stop = queue.popleft()  # atomic: the workers share the queue
                    except IndexError:
                        return done
                    done.append(run(start, stop, single))

            workers = min(self.threads, len(queue))
            results = [r for part in self.workers.map(pull, range(workers)) for r in part]
        out = np.empty((total, *results[0][1].shape[1:]), dtype=np.float32)
        for idx, result in results:
            out[idx] = result
        return out

    def _images(self, arrays: list[np.ndarray]) -> np.ndarray:
        pixels = np.concatenate(arrays, axis=0)
        chunks = [self._run({self.input_names[0]: pixels[i : i + 32]}) for i in range(0, len(pixels), 32)]
        return np.concatenate(chunks, axis=0).astype(np.float32, copy=False)

    def execute(self, requests: list) -> list:
        arrays: list = []
        sizes: list[int] = []
        errors: dict[int, str] = {}
        for i, request in enumerate(requests):
            tensors = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names]
            if self.is_text and any(t.shape != tensors[0].shape for t in tensors):
                shapes = ", ".join(f"{n} {t.shape}" for n, t in zip(self.input_names, tensors, strict=True))
                errors[i] = f"token inputs must have one shape: {shapes}"
                sizes.append(0)
                continue
            arrays.append(tuple(tensors) if self.is_text else tensors[0])
            sizes.append(tensors[0].shape[0])
        merged = (self._text(arrays) if self.is_text else self._images(arrays)) if arrays else None
        responses = []
        offset = 0
        for i, n in enumerate(sizes):
            if i in errors:
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(errors[i]))
                )
                continue
            assert merged is not None
            # the config's dims: a reranker's [n] scores go out as [n, 1], as the ONNX backend reshapes them
            part = merged[offset : offset + n].reshape(n, *self.output_dims)
            tensor = pb_utils.Tensor(self.output_name, part)
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            offset += n
        return responses
