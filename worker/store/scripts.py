"""The record store's Lua scripts (lua/) and the one way batches of them run: a
non-transactional pipeline of EVALSHA, with NOSCRIPT answered by loading the scripts and
resending exactly the refused commands (a restarted or flushed server; on a Redis Cluster
maybe one master of several)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from worker.store.translate import translated

SCRIPTS = ("accept", "commit", "release", "renew", "drop_head", "claim_orphans", "append",
           "purge", "forget")
WITH_WINDOW = ("accept", "commit", "drop_head", "append", "forget")


def script_text(name: str) -> str:
    """A script's text; those that read or write the dedupe marks start with window.lua."""
    def text(stem: str) -> str:
        return (Path(__file__).parent / "lua" / f"{stem}.lua").read_text(encoding="utf-8")

    return text("window") + "\n" + text(name) if name in WITH_WINDOW else text(name)


class ScriptRunner:
    """The registered scripts of one client (plain or cluster) and its pipelines."""

    def __init__(self, client: redis.Redis | Any) -> None:
        self.client = client
        self.scripts = {name: client.register_script(script_text(name)) for name in SCRIPTS}

    def pipelined(self, fill: Callable[[Any], None]) -> list[Any]:
        """Run the commands ``fill`` queues in one non-transactional pipeline. Scripts go
        as EVALSHA (redis-py's Script objects would add a SCRIPT EXISTS round trip to every
        pipeline). A server that lost its scripts (restarted, flushed; on a cluster maybe one
        node of several) answers NOSCRIPT to every script command sent to it, and none of
        them ran; the scripts are loaded again and exactly those commands are sent again, in
        their order (a record's commands all go to one node)."""
        with translated():
            pipe = self.client.pipeline(transaction=False)
            fill(pipe)
            answers: list[Any] = pipe.execute(raise_on_error=False)
            missing = [i for i, answer in enumerate(answers)
                       if isinstance(answer, redis.exceptions.NoScriptError)]
            if missing:
                for script in self.scripts.values():
                    self.client.script_load(script.script)
                # ``fill`` queues the same commands again (only times may differ): resend
                # those that were refused, in their order.
                replay = self.client.pipeline(transaction=False)
                fill(replay)
                commands = queued(replay)
                replay.reset()
                again = self.client.pipeline(transaction=False)
                for i in missing:
                    again.execute_command(*commands[i])
                for i, answer in zip(missing, again.execute(raise_on_error=False),
                                     strict=True):
                    answers[i] = answer
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
            return answers


def evalsha(pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
    """Queue ``script`` on ``pipe`` by its SHA1 (see ``ScriptRunner.pipelined``)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


def queued(pipe: Any) -> list[tuple[Any, ...]]:
    """The commands queued on a pipeline (plain or cluster), as argument tuples."""
    strategy = getattr(pipe, "_execution_strategy", None)
    if strategy is not None:  # redis-py's ClusterPipeline keeps them in its strategy
        return [tuple(command.args) for command in strategy.command_queue]
    return [tuple(args) for args, _options in pipe.command_stack]
