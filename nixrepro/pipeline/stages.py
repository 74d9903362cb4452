"""A pipeline's stages as nixrepro.toml declares them (``[stages.NAME]``) and the graph their data
makes: an input URI that another stage declares as an output makes that stage run first
(``after`` adds links that carry no data)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..config import Config, StageConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Output:
    local: str
    uri: str

    @classmethod
    def parse(cls, stage: str, text: str) -> Output:
        local, sep, uri = text.partition("=")
        if not sep or not local or "://" not in uri:
            raise ConfigError(
                f"stage {stage!r}: output {text!r} is not LOCAL=URI; write it as "
                "\"model.pkl=file:///data/model.pkl\"."
            )
        return cls(local, uri)


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]
    inputs: list[str]
    outputs: list[Output]
    params: dict[str, Any]
    env: str | None
    deps: list[str]
    after: list[str]

    @classmethod
    def from_config(cls, name: str, stage: StageConfig) -> Stage:
        argv = _split_cmd(name, stage.cmd)
        if not argv:
            raise ConfigError(f"stage {name!r} has an empty cmd; give the command to run.")
        if any("\0" in arg for arg in argv):  # no process can be given one
            raise ConfigError(f"stage {name!r}: cmd holds a NUL character; remove it.")
        if stage.env is not None and not stage.env.strip():  # not silently [run] flake instead
            raise ConfigError(f"stage {name!r} has an empty env; give a flake output such as "
                              "\".#env\", or leave env out to use [run] flake.")
        return cls(name, argv, list(stage.inputs), [Output.parse(name, o) for o in stage.outputs],
                   dict(stage.params), stage.env, list(stage.deps), list(stage.after))


def _split_cmd(name: str, cmd: str | list[str]) -> list[str]:
    if not isinstance(cmd, str):
        return list(cmd)
    try:
        return shlex.split(cmd)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise ConfigError(
            f"stage {name!r}: cmd {cmd!r} cannot be split as a shell would "
            f"({str(exc).lower()}); close the quote or escape, or give cmd as a list of arguments."
        ) from exc


@dataclass(frozen=True)
class Pipeline:
    stages: dict[str, Stage]
    upstream: dict[str, set[str]]  # stage -> the stages that must finish before it
    producer: dict[str, str]  # output URI -> stage that writes it

    @classmethod
    def from_config(cls, config: Config) -> Pipeline:
        if not config.stages:
            raise ConfigError(
                f"{config.source or 'nixrepro.toml'} defines no stages; add [stages.NAME] tables "
                "(see docs/pipelines.md)."
            )
        stages = {name: Stage.from_config(name, sc) for name, sc in config.stages.items()}
        producer: dict[str, str] = {}
        for stage in stages.values():
            for out in stage.outputs:
                if out.uri in producer:
                    raise ConfigError(
                        f"stages {producer[out.uri]!r} and {stage.name!r} both write {out.uri}; "
                        "give each output one producer."
                    )
                producer[out.uri] = stage.name
        upstream: dict[str, set[str]] = {}
        for stage in stages.values():
            unknown = [a for a in stage.after if a not in stages]
            if unknown:
                raise ConfigError(
                    f"stage {stage.name!r} runs after {unknown[0]!r}, which is not a stage; "
                    f"known stages: {', '.join(sorted(stages))}."
                )
            links = {producer[uri] for uri in stage.inputs if uri in producer} | set(stage.after)
            upstream[stage.name] = links  # reading its own output is a cycle, reported below
        pipeline = cls(stages, upstream, producer)
        pipeline.order()  # refuses a cycle now, not halfway through a run
        return pipeline

    def order(self) -> list[str]:
        """Stages in an order where each comes after everything it depends on.

        A depth-first walk with an explicit stack, so a long chain of stages is no recursion limit.
        """
        done: list[str] = []
        state: dict[str, str] = {}
        for start in sorted(self.stages):
            if state.get(start) == "done":
                continue
            path: list[str] = [start]  # the stages being visited, outermost first
            todo: list[Iterator[str]] = [iter(sorted(self.upstream[start]))]
            state[start] = "visiting"
            while todo:
                up = next(todo[-1], None)
                if up is None:
                    todo.pop()
                    name = path.pop()
                    state[name] = "done"
                    done.append(name)
                elif state.get(up) == "visiting":
                    cycle = [*path[path.index(up):], up]
                    raise ConfigError(
                        f"the stages form a cycle ({' -> '.join(cycle)}); remove one of these "
                        "links (an input that is another stage's output, or `after`)."
                    )
                elif state.get(up) != "done":
                    state[up] = "visiting"
                    path.append(up)
                    todo.append(iter(sorted(self.upstream[up])))
        return done

    def closure_of(self, targets: Iterable[str]) -> list[str]:
        """The targets and everything upstream of them, in run order."""
        wanted: set[str] = set()
        todo = list(targets)
        for name in todo:
            if name not in self.stages:
                known = ", ".join(sorted(self.stages))
                raise ConfigError(f"there is no stage {name!r}; known stages: {known}.")
            if name not in wanted:
                wanted.add(name)
                todo.extend(self.upstream[name])
        return [name for name in self.order() if name in wanted]

    def downstream(self, name: str) -> set[str]:
        found: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            for other, ups in self.upstream.items():
                if current in ups and other not in found:
                    found.add(other)
                    todo.append(other)
        return found
