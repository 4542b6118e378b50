"""`dataflux llm serve`: SmolLM2-135M-Instruct on a local llama.cpp server, for trying the
model-backed steps without GPUs. The server itself (fetching the model, starting and stopping the
process) is dataflux/llm/serve.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dataflux.llm.serve import (
    DEFAULT_N_CTX,
    DEFAULT_PORT,
    endpoint_snippet,
    ensure_smollm2,
    llama_cpp_available,
    run_owned,
    server_command,
    server_env,
)


def cmd_serve(args: argparse.Namespace) -> int:
    model = Path(args.model) if args.model else ensure_smollm2()
    if not model.is_file():
        raise FileNotFoundError(f"--model {model}: no such file")
    if not llama_cpp_available():
        print("dataflux llm serve: llama-cpp-python is not installed; install the optional extra:\n"
              "  pip install 'dataflux[llm]'", file=sys.stderr)
        return 2
    cmd = server_command(model, host=args.host, port=args.port, n_ctx=args.n_ctx, n_threads=args.threads)
    base_url = f"http://{args.host}:{args.port}/v1"
    print(f"serving {model.name} at {base_url}; point data_catalog.yaml at it with:\n\n"
          f"{endpoint_snippet(base_url)}", flush=True)
    return run_owned(cmd, env=server_env())


def register(subparsers) -> None:
    """Adds `dataflux llm serve` to the CLI."""
    llm = subparsers.add_parser("llm", help="model endpoints: a local server for trying the model-backed steps")
    sub = llm.add_subparsers(dest="llm_command", required=True)
    p = sub.add_parser("serve", help="serve SmolLM2-135M-Instruct (GGUF) on 127.0.0.1 with llama.cpp")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address; keep 127.0.0.1 unless you mean to expose the server")
    p.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX, help="context window in tokens")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice)")
    p.add_argument("--model", default=None, help="a GGUF file to serve instead of SmolLM2-135M")
    p.set_defaults(func=cmd_serve)
