"""The lazy stream of conversations: scenario x vars x sample x target, with stable ids."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from runner.client.providers import PROVIDERS
from runner.client.providers.base import Capabilities
from runner.errors import InputError
from runner.messages import Image
from runner.spec.scenarios import Scenario, Server
from runner.spec.targets import Target


@dataclass(slots=True, frozen=True)
class Conversation:
    """One planned conversation; cheap to make, made only when a worker is free."""

    id: str
    scenario: Scenario
    vars: dict[str, Any]
    sample: int
    target: Target
    seed: int | None = None  # sent as the `seed` param: each sample its own, the same each run
    samples: int = 1  # how many samples of these vars the plan holds (this one among them)


def conversation_id(
    scenario_id: str, values: dict[str, Any], sample: int, target: str, digits: int = 10
) -> str:
    """Stable across runs: the same scenario, vars, sample and target give the same id.

    Rows of a vars_file get 16 hex digits: 10 would likely collide past a million rows."""
    cid = scenario_id
    if values:
        digest = json.dumps(values, sort_keys=True, ensure_ascii=False).encode()
        cid += "[" + hashlib.sha1(digest).hexdigest()[:digits] + "]"
    cid += "@" + target
    return cid + (f"#{sample}" if sample else "")


def part_of(cid: str, parts: int) -> int:
    """The part (1..PARTS) a conversation id falls in: the same in every process and run
    (a digest, not Python's salted hash)."""
    digest = hashlib.blake2b(cid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % parts + 1


def select(scenarios: list[Scenario], patterns: tuple[str, ...]) -> list[Scenario]:
    """Scenarios matching any -k pattern: an id glob, or tag:NAME."""
    if not patterns:
        return scenarios
    return [s for s in scenarios if any(_matches(s, p) for p in patterns)]


def _matches(scenario: Scenario, pattern: str) -> bool:
    if pattern.startswith("tag:"):
        return pattern[4:] in scenario.tags
    return fnmatch.fnmatchcase(scenario.id, pattern)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    if not text:
        return None
    k, sep, n = text.partition("/")
    if sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n):
        return int(k), int(n)
    raise InputError(f"--shard must be K/N with 1 <= K <= N, got '{text}'")


class Plan:
    """All conversations of a run, made lazily in a stable order."""

    def __init__(
        self,
        scenarios: list[Scenario],
        targets: list[Target],
        repeat: int | None = None,
        shard: tuple[int, int] | None = None,
    ):
        self.scenarios = scenarios
        self.targets = targets
        self.repeat = repeat
        self.shard = shard
        self.judges: tuple[list[Target], str | None] = ([], None)  # grading targets, default
        self.simulators: list[Target] = []  # the targets that play the user (simulate.user)
        # part P of M (--executor ray's worker P): the conversations whose id hashes to P;
        # len() stays the whole plan's (a part's is known only by reading it)
        self.part: tuple[int, int] | None = None
        check_context(scenarios, targets)

    def samples(self, scenario: Scenario) -> int:
        return self.repeat if self.repeat is not None else scenario.repeat

    def unsharded_total(self) -> int:
        per_target = sum(s.var_count() * self.samples(s) for s in self.scenarios)
        return per_target * len(self.targets)

    def __len__(self) -> int:
        total = self.unsharded_total()
        if not self.shard:
            return total
        k, n = self.shard
        return total // n + (1 if k - 1 < total % n else 0)

    def __iter__(self) -> Iterator[Conversation]:
        index = 0
        k, n = self.shard or (1, 1)
        p, m = self.part or (1, 1)
        for scenario in self.scenarios:
            samples = self.samples(scenario)
            digits = 16 if scenario.vars_file is not None else 10
            for values in scenario.var_combinations():
                for sample in range(samples):
                    for target in self.targets:
                        if index % n == k - 1:
                            cid = conversation_id(scenario.id, values, sample, target.name, digits)
                            if m == 1 or part_of(cid, m) == p:
                                seed = sample_seed(scenario, target, sample, samples)
                                yield Conversation(
                                    cid, scenario, values, sample, target, seed, samples
                                )
                        index += 1


def sample_seed(scenario: Scenario, target: Target, sample: int, samples: int) -> int | None:
    """With repeat > 1, sample i sends seed (the given seed, else 0) + i, where the
    provider accepts one: samples differ, and a rerun sends the same seeds."""
    return seed_of({**target.params, **scenario.params}, target, sample, samples)


def seed_of(params: dict[str, Any], target: Target, sample: int, samples: int) -> int | None:
    """sample_seed from PARAMS' seed (a simulated user's: its target's params alone)."""
    if samples < 2 or not PROVIDERS[target.provider].capabilities.seed:
        return None
    base = params.get("seed", 0)
    return (base if isinstance(base, int) and not isinstance(base, bool) else 0) + sample


def check_context(scenarios: list[Scenario], targets: list[Target]) -> None:
    """`context: server` needs a protocol that keeps history on the server; tools and
    images a protocol that takes them (and images of a type it takes)."""
    able = " or ".join(n for n, cls in PROVIDERS.items() if cls.capabilities.server_context)
    problems = [
        f"{s.file}:{s.line}: scenario '{s.id}' uses context: server, which needs a target "
        f"whose provider keeps the history ({able}); target '{t.name}' speaks {t.provider}"
        for s in scenarios
        if isinstance(s.context, Server)
        for t in targets
        if not PROVIDERS[t.provider].capabilities.server_context
    ]
    problems += [
        f"{s.file}:{s.line}: scenario '{s.id}' uses context: server, which cannot ride a "
        f"batch (each line stands alone); target '{t.name}' is in batch mode"
        for s in scenarios
        if isinstance(s.context, Server)
        for t in targets
        if t.batch
    ]
    problems += [p for s in scenarios for t in targets for p in _parts_problems(s, t)]
    if problems:
        raise InputError(problems)


def _parts_problems(scenario: Scenario, target: Target) -> list[str]:
    """Tools or images the target's provider cannot take, said at the scenario or turn."""
    able = PROVIDERS[target.provider].capabilities
    said = f"target '{target.name}' ({target.provider})"
    out = []
    if scenario.tools and not able.tools:
        out.append(f"{scenario.file}:{scenario.line}: {said} takes no tools")
    for turn in scenario.turns:
        for image in (p for p in turn.parts if isinstance(p, Image)):
            why = _image_refused(image, able)
            if why is not None:
                out.append(f"{scenario.file}:{turn.line}: {said} takes {why} ({image.ref})")
    return out


def _image_refused(image: Image, able: Capabilities) -> str | None:
    """Why a provider that can do ABLE cannot take IMAGE (None: it can)."""
    if not able.images:
        return "no images"
    if image.media_type is None:  # an https URL whose name says no type
        if able.url_image_type:
            return "an image by URL only when its name ends in a type (.png, .jpg, ...)"
        return None
    return None if image.media_type in able.image_types else f"no {image.media_type} images"
