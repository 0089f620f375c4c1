"""``modelfix run NAME PROMPT``: load a pinned model and generate, as a smoke test after ``sync``.

The completion goes to stdout (so it can be piped); the files fetched on a
cold cache (as ``sync`` shows them), the load time and the generation speed
go to stderr::

    $ modelfix run chat "Capital of France?" --max-tokens 16 --chat
    Paris is the capital of France.
    loaded chat in 0.84 s; 9 tokens in 0.21 s (42.9 tokens/s)
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from . import positive_int

    p = subparsers.add_parser("run", help="load a model and generate a completion (a smoke test)")
    p.add_argument("name", help="model name in the lockfile")
    p.add_argument("prompt", help="text to complete (or the user message with --chat)")
    p.add_argument("--max-tokens", type=positive_int, default=64, metavar="N", help="tokens to generate (default: 64)")
    p.add_argument("--chat", action="store_true", help="send PROMPT as a chat message (the model's chat template)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, deterministic)")
    p.add_argument("--n-ctx", type=int, default=None, metavar="N", help="context size (default: lockfile, then 512)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from . import project
    from .progress import progress

    with progress():
        started = time.perf_counter()
        llm = project(args).load(args.name, n_ctx=args.n_ctx)
        load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    if args.chat:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": args.prompt}],
            max_tokens=args.max_tokens,
            temperature=args.temperature,
        )
        text = out["choices"][0]["message"]["content"] or ""
    else:
        out = llm(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature)
        text = out["choices"][0]["text"]
    seconds = time.perf_counter() - started
    tokens = out["usage"]["completion_tokens"]

    print(text)
    rate = tokens / seconds if seconds > 0 else float("inf")
    print(
        f"loaded {args.name} in {load_seconds:.2f} s; {tokens} tokens in {seconds:.2f} s ({rate:.1f} tokens/s)",
        file=sys.stderr,
    )
    return 0
