"""Fuzzing of the agent's inputs (issue #10): config files, MQTT commands, corrupted video.

Hypothesis generates what reaches the agent from outside and checks one property per kind
of input: every input gives a result or the documented error, never another exception, a
hang or a crash.

* Config files (``parse_config``, ``load_config``): arbitrary text and bytes, mutations of a
  valid config (leaves of other types, deleted and unknown keys, deep nesting), YAML tags,
  alias bombs and duplicate keys. Result: an ``AgentConfig`` or a ``ConfigError`` whose every
  problem starts with the file name and names the line or YAML path.
* MQTT commands, fed to a real ``Agent`` (SQLite state, the synthetic model, broker and
  cameras on a closed loopback port, no thread started): random bytes and JSON, envelopes
  with every command and arguments of every type, response topics. Result: a reply that
  follows ``docs/mqtt/command_reply.schema.json``, committed to the outbox and recorded,
  with the rules in force still the config's plus valid overrides.
* Corrupted H.264 files (MP4 and MPEG-TS; overwritten, zeroed, duplicated, deleted and
  flipped ranges, truncation). Result: ``probe`` and ``grab_frames`` give frames or a
  ``StreamError`` in bounded time; a ``CameraReader`` on such a file keeps its thread alive
  and reports an error class.

The CI profile tries a few hundred inputs per target, derandomized (the same inputs every
run, no example database). A long campaign draws fresh random inputs (a failure prints the
``@reproduce_failure`` line that replays it) and reports the counts::

    MCLZ_FUZZ_EXAMPLES=20000 MCLZ_FUZZ_REPORT=/tmp/fuzz.json .venv/bin/pytest tests/test_fuzz.py

``MCLZ_FUZZ_EXAMPLES`` is ``N`` (N inputs per target; the video targets N/10, the camera
reader N/200) or ``Kx`` (K times the CI counts). ``MCLZ_FUZZ_REPORT`` names a JSON file that
receives the inputs tried per target, what they gave (valid, refused, ...) and how often
each known bug was hit.

Crashes found and not fixed yet go in ``KNOWN_BUGS``: the fuzzers count an input that hits
one and go on, and each must have a reproducer below (marked ``xfail(strict=True)`` until it
is fixed, a plain regression test after). Every bug found so far is fixed.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import resource
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import hypothesis
import jsonschema
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.config import (
    AgentConfig,
    CameraConfig,
    CameraRuleConfig,
    GatingConfig,
    HeartbeatConfig,
    IdentityConfig,
    MqttConfig,
    PictureConfig,
    RuleConfig,
    ScheduleWindow,
    TlsConfig,
    ViewConfig,
    ZoneConfig,
    load_config,
    parse_config,
)
from agent.errors import ConfigError, StreamError
from agent.ingest.frames import FrameSlot
from agent.ingest.probe import grab_frames, probe
from agent.ingest.reader import CameraReader
from agent.records import CameraState
from agent.service.agent import Agent
from agent.uplink import messages as contract
from agent.uplink.commands import MAX_COMMAND_BYTES
from agent.uplink.overrides import MAX_MUTE_MINUTES, SETTABLE, effective_rules, merge_rule
from mclz_testkit.clips import make_clip
from mclz_testkit.common import free_port
from mclz_testkit.mqtt import load_schema
from mclz_testkit.synthetic_model import build_pattern_model

T = TypeVar("T")
Loc = tuple[str | int, ...]
AGENT_DIR = Path(contract.__file__).resolve().parent  # where a known bug's frame must be

# ---------------------------------------------------------------------- how much to fuzz

#: Inputs per target in the CI profile: the whole file runs in about a minute.
DEFAULT_EXAMPLES = {
    "config_text": 300,
    "config_bytes": 100,
    "config_structured": 200,
    "config_yaml_features": 100,
    "command_payload": 400,
    "command_args": 400,
    "response_topic": 100,
    "stream_file": 40,
    "camera_reader": 6,
}
#: With MCLZ_FUZZ_EXAMPLES=N a target tries N // cost inputs: decoding video costs more.
COST = {"stream_file": 10, "camera_reader": 200}


def _examples(raw: str) -> dict[str, int]:
    """Inputs per target for the MCLZ_FUZZ_EXAMPLES value ``raw`` (empty: the CI counts)."""
    raw = raw.strip().lower()
    try:
        if not raw:
            return dict(DEFAULT_EXAMPLES)
        if raw.endswith("x"):
            factor = float(raw[:-1])
            return {k: max(1, round(v * factor)) for k, v in DEFAULT_EXAMPLES.items()}
        total = int(raw)
    except ValueError:
        raise ValueError(
            f"MCLZ_FUZZ_EXAMPLES must be N or Kx (e.g. 20000, 5x), not {raw!r}"
        ) from None
    return {k: max(1, total // COST.get(k, 1)) for k in DEFAULT_EXAMPLES}


LONG_RUN = bool(os.environ.get("MCLZ_FUZZ_EXAMPLES", "").strip())
EXAMPLES = _examples(os.environ.get("MCLZ_FUZZ_EXAMPLES", ""))
# Profiles of this file only, given to each test as the parent of its settings: loading one
# would change the defaults of every other hypothesis test in the session.
settings.register_profile(
    "mclz-fuzz-ci",
    database=None,  # nothing remembered between runs: CI sees the same inputs every time
    derandomize=True,
    deadline=timedelta(seconds=10),  # a 2-core CI box decoding video: generous on purpose
    print_blob=True,
)
settings.register_profile("mclz-fuzz-long", settings.get_profile("mclz-fuzz-ci"), derandomize=False)
PROFILE = "mclz-fuzz-long" if LONG_RUN else "mclz-fuzz-ci"

#: Inputs tried per target, what they gave, and the known bugs they hit: MCLZ_FUZZ_REPORT.
TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()
KNOWN_HITS: Counter[str] = Counter()


def fuzz(target: str) -> settings:
    """Settings of one fuzz target: this file's profile with the target's example count."""
    return settings(settings.get_profile(PROFILE), max_examples=EXAMPLES[target])


@pytest.fixture(scope="module", autouse=True)
def fuzz_report() -> Iterator[None]:
    """Write the inputs tried per target to $MCLZ_FUZZ_REPORT when the module is done."""
    started = time.monotonic()
    yield
    target = os.environ.get("MCLZ_FUZZ_REPORT")
    if not target:
        return
    report = {
        "profile": PROFILE,
        "max_examples": EXAMPLES,
        "tried": dict(sorted(TRIED.items())),
        "total_tried": sum(TRIED.values()),
        "outcomes": dict(sorted(OUTCOMES.items())),
        "known_bug_hits": dict(sorted(KNOWN_HITS.items())),
        "seconds": round(time.monotonic() - started, 1),
        "hypothesis": hypothesis.__version__,
    }
    Path(target).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------- known bugs


@dataclass(frozen=True)
class KnownBug:
    """A crash the fuzzers found that is not fixed yet, told apart by where it is raised."""

    exception: type[BaseException]
    module: str  # file name under agent/ of the innermost agent frame
    function: str
    message: str  # regular expression searched in str(exception)
    reason: str


#: Crashes found and not fixed yet (none now). An input that hits one is counted and
#: skipped; each needs a strict-xfail reproducer below. The ten the fuzzers found in
#: session 3 (unhashable YAML keys, deep nesting and huge integers in YAML and JSON, float
#: overflow in durations, mute and resend, non-string command and camera) are fixed; their
#: reproducers stay as regression tests.
KNOWN_BUGS: dict[str, KnownBug] = {}


def known_bug(exc: BaseException) -> str | None:
    """The KNOWN_BUGS entry ``exc`` is an instance of, else None."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if Path(f.filename).resolve().parent == AGENT_DIR
    ]
    if not frames:
        return None
    innermost = frames[-1]
    for name, bug in KNOWN_BUGS.items():
        if (
            isinstance(exc, bug.exception)
            and Path(innermost.filename).name == bug.module
            and innermost.name == bug.function
            and re.search(bug.message, str(exc))
        ):
            return name
    return None


def tolerate_known(exc: BaseException) -> str:
    """Count ``exc`` as a hit of its known bug; re-raise anything else."""
    name = known_bug(exc)
    if name is None:
        raise exc
    KNOWN_HITS[name] += 1
    return name


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()`` in a helper thread; fail the test when it has not returned in ``seconds``.

    Hypothesis' deadline is only checked after an example returns: this bounds a real hang.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(call())
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=target, name="fuzz-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"no answer within {seconds:g} s: the call hangs")
    if errors:
        raise errors[0]
    return results[0]


# ---------------------------------------------------------------------- shared strategies

HUGE_NUMBERS = st.sampled_from(
    [
        2**31,
        -(2**31),
        2**53 + 1,
        2**63,
        -(2**63) - 1,
        2**64,
        10**30,
        10**308,
        -(10**308),
        10**400,  # beyond float: hits "duration-overflow", "mute-overflow", "resend-overflow"
        -(10**400),
        1e308,
        5e-324,
        -0.0,
    ]
)
ODD_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "NaN",
        "nan",
        "Infinity",
        "-inf",
        "1e400",
        "-5s",
        "5s",
        "500ms",
        "10m",
        "7d",
        "0x10",
        "../../etc/passwd",
        "rtsp://admin:secret@10.0.0.1/live",
        "后厨",
        "\x00",
        "\u202e",
        "a" * 300,
        "null",
        "true",
        "{}",
        "${HOME}",
        "%s%n",
        "'; DROP TABLE outbox; --",
    ]
)
SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_NUMBERS,
    st.floats(),
    st.text(max_size=30),
    ODD_STRINGS,
)
JSONISH: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)

# ---------------------------------------------------------------------- config files

SOURCE = "fuzz.yaml"
BOX = "identity: {city: hz, school_id: s-001, box_id: box-01}\n"
#: A valid config touching every kind of section (models, dicts of models, lists, secrets,
#: durations, zones, schedules), small enough to parse in a few milliseconds.
BASE: dict[str, Any] = {
    "identity": {"city": "hangzhou", "school_id": "330106-0012", "box_id": "box-01"},
    "mqtt": {
        "url": "mqtts://iot.platform.example:8883",
        "password": {"env": "MCLZ_MQTT_PASSWORD"},
        "keepalive": 30,
        "session_expiry": "7d",
        "tls": {"insecure": False},
    },
    "cameras": {
        "kitchen-1": {
            "name": "后厨操作间",
            "url": "rtsp://admin@192.168.1.64:554/Streaming/Channels/102",
            "detect_interval": "1s",
            "picture": {"black_luma": 20, "frozen_after": "5m"},
            "zones": {"prep": {"polygon": [[0.05, 0.4], [0.6, 0.4], [0.6, 0.98]]}},
            "rules": {"no_mask": {"zones": ["prep"], "schedule": "kitchen_hours"}},
            "gating": {"enabled": True},
            "view": {"crop": [0.0, 0.2, 1.0, 1.0], "tiles": [2, 1], "overlap": 0.15},
        }
    },
    "rules": {
        "no_hat": {"labels": ["head_bare"], "min_duration": "3s", "consensus": [3, 5]},
        "no_mask": {"labels": ["face_no_mask"], "cooldown": "10m"},
    },
    "schedules": {"kitchen_hours": [{"days": ["mon-fri"], "start": "06:00", "end": "13:30"}]},
    "heartbeat": {"interval": "60s"},
}
#: The mappings of BASE that are models (unknown keys are errors there), with their model.
MODEL_AT: dict[Loc, type[BaseModel]] = {
    (): AgentConfig,
    ("identity",): IdentityConfig,
    ("mqtt",): MqttConfig,
    ("mqtt", "tls"): TlsConfig,
    ("cameras", "kitchen-1"): CameraConfig,
    ("cameras", "kitchen-1", "picture"): PictureConfig,
    ("cameras", "kitchen-1", "zones", "prep"): ZoneConfig,
    ("cameras", "kitchen-1", "rules", "no_mask"): CameraRuleConfig,
    ("cameras", "kitchen-1", "gating"): GatingConfig,
    ("cameras", "kitchen-1", "view"): ViewConfig,
    ("rules", "no_hat"): RuleConfig,
    ("rules", "no_mask"): RuleConfig,
    ("schedules", "kitchen_hours", 0): ScheduleWindow,
    ("heartbeat",): HeartbeatConfig,
}
NEST_MARK = "__fuzz_nest__"
VALUE_MARK = "__fuzz_value__"


def dump(doc: Any) -> str:
    """Block-style YAML, keys in order, one line per scalar."""
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=10**6)


BASE_TEXT = dump(BASE)
YAML_TOKENS = [
    "identity:",
    "mqtt:",
    "cameras:",
    "rules:",
    " url: ",
    "kitchen-1:",
    " ",
    "  ",
    "\n",
    "\n  ",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ", ",
    "'",
    '"',
    "&a ",
    "*a",
    "<<: ",
    "? ",
    "!!python/object/apply:os.system ",
    "!!binary ",
    "!!set ",
    "!!str ",
    "!x ",
    "~",
    "null",
    "yes",
    ".nan",
    "-.inf",
    "1e999",
    "0x1F",
    "1_000",
    "2024-01-01",
    "# ",
    "|\n",
    ">-\n",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "\t",
    "\ufeff",
    "\u2028",
    "后厨",
]
TEXT_EDIT = st.tuples(
    st.integers(0, len(BASE_TEXT)),
    st.integers(0, 40),
    st.one_of(st.text(max_size=12), st.sampled_from(YAML_TOKENS)),
)


def splice(text: str, edits: Sequence[tuple[int, int, str]]) -> str:
    """``text`` with each (offset, deleted length, insertion) applied in turn."""
    for offset, length, insert in edits:
        at = min(offset, len(text))
        text = text[:at] + insert + text[at + length :]
    return text


CONFIG_TEXT = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=4)), max_size=80).map(
        "".join
    ),
    st.lists(TEXT_EDIT, min_size=1, max_size=4).map(lambda edits: splice(BASE_TEXT, edits)),
)


def assert_located(exc: ConfigError, source: str) -> None:
    """Every problem of ``exc`` is a non-empty line ``source[:line] [path]: message``."""
    assert isinstance(exc.problems, list)
    assert exc.problems, f"ConfigError without problems: {exc}"
    where = re.compile(re.escape(source) + r"(:\d+)?[ :]")
    for problem in exc.problems:
        assert isinstance(problem, str)
        assert where.match(problem), f"problem does not start with {source}[:line]: {problem!r}"
        _location, sep, message = problem.partition(": ")
        assert sep, f"problem has no message: {problem!r}"
        assert message.strip(), f"problem has an empty message: {problem!r}"


@dataclass
class Outcome:
    """What a config load gave: a config, a ConfigError, or a known bug's name."""

    config: AgentConfig | None = None
    error: ConfigError | None = None
    bug: str | None = None


def load_outcome(target: str, load: Callable[[], AgentConfig], source: str) -> Outcome:
    """Run ``load``; fail on anything but a config, a located ConfigError or a known bug."""
    try:
        config = load()
    except ConfigError as exc:
        assert_located(exc, source)
        OUTCOMES[f"{target}: refused"] += 1
        return Outcome(error=exc)
    except Exception as exc:
        bug = tolerate_known(exc)
        OUTCOMES[f"{target}: known bug {bug}"] += 1
        return Outcome(bug=bug)
    assert isinstance(config, AgentConfig)
    OUTCOMES[f"{target}: valid"] += 1
    return Outcome(config=config)


def test_fuzz_bases_are_valid() -> None:
    """The structured fuzzers start from a valid config, and MODEL_AT names its models."""
    config = parse_config(BASE_TEXT, SOURCE)
    assert config.cameras["kitchen-1"].zones["prep"].polygon
    for loc in MODEL_AT:
        assert isinstance(lookup(BASE, loc), dict), loc


@fuzz("config_text")
@given(text=CONFIG_TEXT)
def test_config_text_gives_config_or_located_error(text: str) -> None:
    """Any text at all is a valid config or a ConfigError whose problems name file and line."""
    TRIED["config_text"] += 1
    load_outcome("config_text", lambda: parse_config(text, SOURCE), SOURCE)


BASE_BYTES = BASE_TEXT.encode()
CONFIG_BYTES = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.tuples(st.integers(0, len(BASE_BYTES)), st.integers(0, 8), st.binary(max_size=8)),
        min_size=1,
        max_size=4,
    ).map(
        lambda edits: splice(
            BASE_BYTES.decode("latin-1"), [(a, n, b.decode("latin-1")) for a, n, b in edits]
        ).encode("latin-1")
    ),
    st.sampled_from(["utf-16", "utf-32", "gb18030", "utf-8-sig", "latin-1"]).map(
        lambda codec: BASE_TEXT.encode(codec, errors="replace")
    ),
)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for config files written by the fuzzers."""
    return tmp_path_factory.mktemp("fuzz-config")


@fuzz("config_bytes")
@given(data=CONFIG_BYTES)
def test_config_file_bytes_give_config_or_located_error(config_dir: Path, data: bytes) -> None:
    """A config file of any bytes loads or is a located ConfigError; non-UTF-8 says so."""
    TRIED["config_bytes"] += 1
    path = config_dir / "agent.yaml"
    path.write_bytes(data)
    outcome = load_outcome("config_bytes", lambda: load_config(path), str(path))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert outcome.error is not None, "a file that is not UTF-8 was accepted"
        assert "not UTF-8" in outcome.error.problems[0]


def lookup(doc: Any, loc: Loc) -> Any:
    """The node of ``doc`` at ``loc``, or None when the path does not exist any more."""
    node = doc
    for part in loc:
        found = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        )
        if not found:
            return None
        node = node[part]
    return node


def node_paths(node: Any, prefix: Loc = ()) -> list[Loc]:
    """Every path below ``node`` (containers and leaves, not the root itself)."""
    if isinstance(node, dict):
        items: list[tuple[str | int, Any]] = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return []
    paths: list[Loc] = []
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(node_paths(child, (*prefix, key)))
    return paths


def dotted(loc: Loc) -> str:
    """A path as the agent writes it in problems: ``cameras.kitchen-1.zones.prep.polygon[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def round_trips(key: str) -> bool:
    """Whether ``key`` comes back from a YAML dump as the same plain string key."""
    try:
        return bool(yaml.safe_load(dump({key: 0})) == {key: 0})
    except yaml.YAMLError:
        return False  # "<<" is YAML's merge key


UNKNOWN_KEYS = st.one_of(
    st.text(min_size=1, max_size=12),
    st.sampled_from(["x", "urls", "enable", "Identity", "functional", "a[0]", "后厨", "1", "~a"]),
).filter(round_trips)


def nested_flow(kind: str, depth: int) -> str:
    """A flow collection ``depth`` levels deep: ``[[[1]]]`` or ``{a: {a: 1}}``."""
    if kind == "[":
        return "[" * depth + "1" + "]" * depth
    return "{a: " * depth + "1" + "}" * depth


@fuzz("config_structured")
@given(data=st.data())
def test_mutated_config_gives_config_or_located_error(data: st.DataObject) -> None:
    """A valid config with leaves retyped, keys deleted or added, values nested deeply, is
    valid or a located ConfigError; an unknown key added to a section is named in it."""
    TRIED["config_structured"] += 1
    doc = copy.deepcopy(BASE)
    added: list[tuple[Loc, str]] = []
    nest = ("[", 1)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "unknown", "nest"]))
        if op == "unknown":
            loc = data.draw(st.sampled_from(sorted(MODEL_AT, key=str)), label="section")
            section = lookup(doc, loc)
            key = data.draw(UNKNOWN_KEYS, label="key")
            if isinstance(section, dict) and key not in section:
                section[key] = data.draw(JSONISH, label="value")
                if key not in MODEL_AT[loc].model_fields:
                    added.append((loc, key))
            continue
        paths = node_paths(doc)
        if not paths:
            continue
        loc = data.draw(st.sampled_from(paths), label="path")
        parent, last = lookup(doc, loc[:-1]), loc[-1]
        if op == "replace":
            parent[last] = data.draw(JSONISH, label="value")
        elif op == "delete":
            del parent[last]
        else:
            parent[last] = NEST_MARK
            nest = (data.draw(st.sampled_from(["[", "{"])), data.draw(st.integers(1, 300)))
    text = dump(doc).replace(NEST_MARK, nested_flow(*nest))
    outcome = load_outcome("config_structured", lambda: parse_config(text, SOURCE), SOURCE)
    still_there = [(loc, key) for loc, key in added if isinstance(lookup(doc, loc), dict)]
    still_there = [(loc, key) for loc, key in still_there if key in lookup(doc, loc)]
    if outcome.bug is not None or not still_there:
        return
    assert outcome.error is not None, f"unknown keys accepted: {still_there}"
    for loc, key in still_there:
        expected = f" {dotted((*loc, key))}: unknown key"
        assert any(p.endswith(expected) for p in outcome.error.problems), (
            f"no problem ends with {expected!r}: {outcome.error.problems}"
        )


PYTHON_TAGS = [
    "!!python/object/apply:os.mkdir [{sentinel}]",
    "!!python/object/apply:subprocess.check_call [[touch, {sentinel}]]",
    "!!python/object/new:pathlib.PosixPath [{sentinel}]",
    "!!python/object:agent.config.AgentConfig {{}}",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/tuple [1, 2]",
]
OTHER_TAGS = [
    "!!binary aGVsbG8=",
    "!!set {{a, b}}",
    "!!omap [{{a: 1}}]",
    "!!pairs [{{a: 1}}]",
    "!!timestamp 2024-01-01",
    "!!float .nan",
    "!!int 0x1F",
    "!!str 5",
    "!!bool yes",
    "!!null ''",
    "!!seq [1]",
    "!!map {{a: 1}}",
    "!custom x",
    "!<tag:example.com,2024:x> y",
]


def max_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@fuzz("config_yaml_features")
@given(data=st.data())
def test_yaml_tags_aliases_and_duplicates_are_handled(
    config_dir: Path, data: st.DataObject
) -> None:
    """Python tags are refused without running anything, an alias bomb is refused in
    bounded time and memory, and a duplicated key is refused at the duplicate's line."""
    TRIED["config_yaml_features"] += 1
    feature = data.draw(st.sampled_from(["tag", "bomb", "duplicate"]), label="feature")
    sentinel = config_dir / "pwned"
    if feature == "duplicate":
        lines = BASE_TEXT.splitlines()
        keyed = [i for i, line in enumerate(lines) if re.match(r"^\s*[^\s#'\"-][^:]*:(\s|$)", line)]
        i = data.draw(st.sampled_from(keyed), label="line")
        text = "\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]]) + "\n"
        outcome = load_outcome(f"yaml {feature}", lambda: parse_config(text, SOURCE), SOURCE)
        assert outcome.error is not None, f"duplicate of line {i + 1} accepted"
        assert outcome.error.problems[0].startswith(
            f"{SOURCE}:{i + 2}: invalid YAML: duplicate key"
        )
        return
    doc = copy.deepcopy(BASE)
    loc = data.draw(st.sampled_from(node_paths(doc)), label="path")
    lookup(doc, loc[:-1])[loc[-1]] = VALUE_MARK
    if feature == "tag":
        tag = data.draw(st.sampled_from(PYTHON_TAGS + OTHER_TAGS), label="tag")
        text = dump(doc).replace(VALUE_MARK, tag.format(sentinel=sentinel))
        outcome = load_outcome(f"yaml {feature}", lambda: parse_config(text, SOURCE), SOURCE)
        assert not sentinel.exists(), "a YAML tag ran code"
        if tag.startswith("!!python"):
            assert outcome.error is not None, f"{tag} accepted"
            assert "python/" in outcome.error.problems[0], outcome.error.problems
        return
    width = data.draw(st.integers(2, 9), label="width")
    depth = data.draw(st.integers(1, 9), label="depth")
    mapping = data.draw(st.booleans(), label="mapping")
    anchors = [f"lol0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, depth):
        refs = [f"*l{level - 1}"] * width
        body = (
            "{" + ", ".join(f"k{j}: {r}" for j, r in enumerate(refs)) + "}"
            if mapping
            else "[" + ", ".join(refs) + "]"
        )
        anchors.append(f"lol{level}: &l{level} {body}")
    text = "\n".join(anchors) + "\n" + dump(doc).replace(VALUE_MARK, f"*l{depth - 1}")
    rss, t0 = max_rss_mb(), time.monotonic()
    outcome = load_outcome(f"yaml {feature}", lambda: parse_config(text, SOURCE), SOURCE)
    assert time.monotonic() - t0 < 5.0, f"alias bomb {width}^{depth} took too long"
    assert max_rss_mb() - rss < 200, f"alias bomb {width}^{depth} grew memory"
    assert outcome.error is not None, "the anchors' top-level keys are unknown: must be refused"


# ---------------------------------------------------------------------- config bugs found


CONFIG_REPRODUCERS = [
    ("yaml-unhashable-key", BOX + "? [a, b]\n: 1\n"),
    ("yaml-deep-nesting", BOX + "mqtt: " + nested_flow("{", 300) + "\n"),
    ("yaml-huge-int", BOX + "mqtt: {keepalive: " + "9" * 4301 + "}\n"),
    ("duration-overflow", BOX + "mqtt: {session_expiry: 1" + "0" * 309 + "}\n"),
]


@pytest.mark.parametrize(
    "text", [text for _, text in CONFIG_REPRODUCERS], ids=[n for n, _ in CONFIG_REPRODUCERS]
)
def test_known_config_crash_is_a_config_error(text: str) -> None:
    """Minimal configs that once crashed parse_config: each is a located ConfigError now."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    assert_located(info.value, SOURCE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BOX + "functions: 1\n", ":2 functions: unknown key"),
        (BOX + "mqtt: {'x[0]': 1}\n", ":2 mqtt.x[0]: unknown key"),
        (
            BOX + "cameras: {functional-kitchen: {url: 'rtsp://h/a', open_timeout: 0}}\n",
            ":2 cameras.functional-kitchen.open_timeout: Input should be greater",
        ),
    ],
    ids=["top-level-key", "key-with-bracket", "camera-id"],
)
def test_problem_names_keys_that_look_like_pydantic_tags(text: str, expected: str) -> None:
    """agent/config/loader.py _clean_loc drops user keys starting "function" or holding "[" from the
    location: the problem must still name them (found by the unknown-key fuzzing)."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    assert any(expected in p for p in info.value.problems), info.value.problems


# ---------------------------------------------------------------------- MQTT commands

CAMERA_IDS = ("kitchen-1", "serving-line")
RULE_NAMES = ("no_hat", "no_mask")
REPLY_SCHEMA = load_schema("command_reply")


class FuzzedAgent:
    """An agent built like ``mclz-agent run`` builds it, never run, and the config it read."""

    def __init__(self, agent: Agent, config: AgentConfig) -> None:
        self.agent = agent
        self.config = config

    def __repr__(self) -> str:
        # Not a dataclass: hypothesis would print the whole config with every failure.
        return f"FuzzedAgent({self.config.topic_root})"


@pytest.fixture(scope="module")
def fuzzed_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedAgent]:
    """A real Agent on a SQLite state dir, the synthetic model, broker and cameras at a closed
    loopback port; no thread is started (Agent.run starts them, and it is not called)."""
    root = tmp_path_factory.mktemp("fuzz-agent")
    closed = free_port()  # nothing listens there
    data = {
        "identity": {"city": "hz", "school_id": "s-001", "box_id": "box-01"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{closed}"},
        "cameras": {
            "kitchen-1": {
                "url": f"rtsp://127.0.0.1:{closed}/kitchen",
                "zones": {"prep": {"polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}},
            },
            "serving-line": {"url": f"rtsp://127.0.0.1:{closed}/serving"},
        },
        "model": {"path": str(build_pattern_model(root / "model"))},
        "rules": {
            "no_hat": {"labels": ["head_bare"], "zones": ["prep"]},
            "no_mask": {"labels": ["face_no_mask"], "schedule": "kitchen_hours"},
        },
        "schedules": {"kitchen_hours": [{"days": ["mon-fri"], "start": "06:00", "end": "13:30"}]},
        "storage": {"state_dir": str(root / "state")},
    }
    path = root / "agent.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    config = load_config(path)
    before = set(threading.enumerate())
    agent = Agent(config, path)
    started = [t.name for t in set(threading.enumerate()) - before]
    try:
        assert started == [], f"building the agent started threads: {started}"
        yield FuzzedAgent(agent, config)
        started = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
        assert started == [], f"threads left running after the fuzzing: {started}"
    finally:
        agent.outbox.close()


def publishable(topic: str | None) -> bool:
    """Whether a response topic can take the reply: non-empty, no wildcard, at most 512 chars."""
    if not topic:
        return False
    return "+" not in topic and "#" not in topic and len(topic) <= 512


def check_control_state(fuzzed: FuzzedAgent) -> None:
    """The config stays the file's; the rules in force are its rules with stored overrides
    that all validate; a mute lasts at most a day."""
    agent = fuzzed.agent
    assert agent.config == fuzzed.config
    overrides = agent.overrides.load()
    for name, changes in overrides.items():
        assert name in agent.config.rules, f"override stored for unknown rule {name!r}"
        rule = merge_rule(name, agent.config.rules[name], changes)  # CommandError: invalid
        assert rule.schedule is None or rule.schedule in agent.config.schedules
    effective = effective_rules(agent.config.rules, overrides)
    assert agent.rules.rules == {n: r for n, r in effective.items() if r.enabled}
    until = agent.mute.until
    assert until is None or until <= time.time() + 60 * MAX_MUTE_MINUTES + 1


def run_command(
    label: str,
    fuzzed: FuzzedAgent,
    payload: bytes,
    topic: str | None = None,
    correlation: bytes | None = None,
) -> dict[str, Any] | None:
    """Hand one command to the agent and check its reply contract; None for a known bug.

    The reply is valid against the schema, rejected ones carry an error, exactly one
    message is committed to the outbox (the reply, on the response topic when publishable,
    with the correlation data) and the command is recorded as accepted or not.
    """
    agent = fuzzed.agent
    try:
        body = agent.commands.handle(payload, topic, correlation)
    except Exception as exc:
        OUTCOMES[f"{label}: known bug {tolerate_known(exc)}"] += 1
        assert agent.outbox.due(10) == []  # these crashes leave no reply at all
        return None
    assert isinstance(body, dict)
    assert isinstance(body["ok"], bool)
    OUTCOMES[f"{label}: {'accepted' if body['ok'] else 'refused'}"] += 1
    if body["ok"]:
        assert "result" in body
    else:
        assert isinstance(body["error"], str)
        assert body["error"].strip(), "a rejected command needs a reason"
        # The command edge turns a handler's crash into 'internal error': still a bug.
        assert not body["error"].startswith("internal error"), body["error"]
    jsonschema.validate(body, REPLY_SCHEMA)
    sent = agent.outbox.due(10)
    assert len(sent) == 1, [m.kind for m in sent]
    reply = sent[0]
    assert (reply.kind, reply.payload) == ("reply", contract.encode(body))
    assert reply.topic == (topic if publishable(topic) else agent.topics.command_reply)
    assert reply.correlation == correlation
    agent.outbox.ack_many([reply.seq])
    _received, request_id, _command, ok = agent.outbox.commands(1)[0]
    assert (request_id, ok) == (body["request_id"], body["ok"])
    check_control_state(fuzzed)
    return body


def as_json(value: Any, ascii_only: bool = True) -> bytes:
    """``value`` as JSON with Python's NaN/Infinity extension (which json.loads reads back)."""
    return json.dumps(value, allow_nan=True, ensure_ascii=ascii_only).encode()


COMMAND_NAMES = ("ping", "heartbeat", "status", "snapshot", "resend", "mute", "set", "reload")
REQUEST_IDS = st.one_of(st.text(min_size=1, max_size=128), st.text(max_size=200), JSONISH)
ENVELOPES = st.fixed_dictionaries(
    {
        "id": REQUEST_IDS,
        "command": st.one_of(st.sampled_from(COMMAND_NAMES), st.text(max_size=12), JSONISH),
    },
    optional={"args": JSONISH, "arg": JSONISH, "extra": JSONISH},
)
VALID_PING = b'{"id": "r1", "command": "ping"}'
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.builds(as_json, JSONISH, st.booleans()),
    st.builds(as_json, ENVELOPES, st.booleans()),
    st.lists(
        st.tuples(st.integers(0, len(VALID_PING)), st.integers(0, 4), st.binary(max_size=4)),
        min_size=1,
        max_size=3,
    ).map(
        lambda edits: splice(
            VALID_PING.decode("latin-1"), [(a, n, b.decode("latin-1")) for a, n, b in edits]
        ).encode("latin-1")
    ),
    st.sampled_from(
        [
            b"",
            b"{}",
            b"null",
            b'{"id": "r1", "command": "ping", "args": {"a": NaN}}',
            b"{" + b" " * MAX_COMMAND_BYTES + b"}",  # too large
            b"[" * 2000 + b"]" * 2000,  # "json-deep-nesting"
            b'{"id": "r1", "command": "ping", "args": {"n": ' + b"9" * 4400 + b"}}",
            '{"id": "后厨", "command": "ping"}'.encode("gb18030"),
        ]
    ),
)


@fuzz("command_payload")
@given(payload=PAYLOADS)
def test_any_command_payload_gets_a_stored_reply(fuzzed_agent: FuzzedAgent, payload: bytes) -> None:
    """Any payload on the command topic gets a schema-valid reply, committed and recorded,
    naming the request's id whenever the payload had a usable one."""
    TRIED["command_payload"] += 1
    body = run_command("command_payload", fuzzed_agent, payload)
    if body is None:
        return
    try:
        request = json.loads(payload)
    except (ValueError, RecursionError):
        return
    rid = request.get("id") if isinstance(request, dict) else None
    if isinstance(rid, str) and 0 < len(rid) <= 128 and len(payload) <= MAX_COMMAND_BYTES:
        assert body["request_id"] == rid


#: Draws that come out True about one time in four, or three times in four.
SOMETIMES = st.sampled_from([True, False, False, False])
MOSTLY = st.sampled_from([True, True, True, False])
GOOD_DURATIONS = st.one_of(
    st.integers(0, 86400), st.sampled_from(["5s", "500ms", "10m", "2h", "  3 s ", "1d"])
)
BAD_DURATIONS = st.one_of(
    st.integers(-(10**6), -1),
    st.integers(7 * 86400 + 1, 10**12),
    st.floats(),
    HUGE_NUMBERS,
    st.sampled_from(["-5s", "8d", "nan", "inf", "3 sec", "1e3s", "99999999999999999999d"]),
    JSONISH,
)
#: Per settable field: values the config accepts, and values it must refuse (or may coerce).
SET_VALUES: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "enabled": (st.booleans(), st.one_of(st.sampled_from(["yes", "off", 0, 1, 2]), JSONISH)),
    "min_confidence": (
        st.one_of(st.none(), st.floats(0.01, 1)),
        st.one_of(st.floats(), HUGE_NUMBERS, st.sampled_from([0, 1.01, "0.5"]), JSONISH),
    ),
    "min_duration": (GOOD_DURATIONS, BAD_DURATIONS),
    "end_after": (GOOD_DURATIONS, BAD_DURATIONS),
    "cooldown": (GOOD_DURATIONS, BAD_DURATIONS),
    "consensus": (
        st.one_of(
            st.none(),
            st.integers(1, 1000).flatmap(lambda of: st.tuples(st.integers(1, of), st.just(of))),
        ),
        st.one_of(
            st.lists(st.one_of(st.integers(-5, 2000), HUGE_NUMBERS, st.floats()), max_size=3),
            JSONISH,
        ),
    ),
    "severity": (
        st.sampled_from(["info", "warning", "critical"]),
        st.one_of(st.sampled_from(["fatal", "WARNING", ""]), JSONISH),
    ),
    "schedule": (
        st.sampled_from([None, "kitchen_hours"]),
        st.one_of(st.sampled_from(["night", "", "KITCHEN_HOURS"]), JSONISH),
    ),
}
assert set(SET_VALUES) == set(SETTABLE), "a settable field has no fuzz values"


@st.composite
def set_args(draw: st.DrawFn) -> dict[str, Any]:
    """Arguments of ``set``: mostly a real rule and good values, else anything at all."""
    args: dict[str, Any] = {}
    if draw(MOSTLY):
        args["rule"] = draw(st.sampled_from(RULE_NAMES))
    elif draw(MOSTLY):
        args["rule"] = draw(
            st.one_of(st.sampled_from(["food_uncovered", "nope", "NO_HAT", ""]), JSONISH)
        )
    for key in draw(st.lists(st.sampled_from(SETTABLE), max_size=3, unique=True)):
        good, bad = SET_VALUES[key]
        args[key] = draw(good if draw(MOSTLY) else bad)
    if draw(SOMETIMES):
        args["reset"] = draw(st.booleans() if draw(MOSTLY) else JSONISH)
    if draw(SOMETIMES):
        other = st.sampled_from(["labels", "zones", "box_height", "x", "", "Enabled"])
        args[draw(other)] = draw(JSONISH)
    return args


TIMES = st.one_of(
    st.floats(),
    st.integers(),
    HUGE_NUMBERS,
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.text(max_size=30),
    JSONISH,
)
MINUTES = st.one_of(
    st.integers(0, MAX_MUTE_MINUTES),
    st.floats(0, MAX_MUTE_MINUTES),
    st.integers(-100, 2000),
    st.floats(),
    HUGE_NUMBERS,
    st.sampled_from(["10", "NaN", True]),
    JSONISH,
)
ARGS: dict[str, st.SearchStrategy[Any]] = {
    "set": set_args(),
    "mute": st.one_of(
        st.fixed_dictionaries({"minutes": MINUTES}),
        st.fixed_dictionaries({}, optional={"minutes": MINUTES, "x": JSONISH}),
    ),
    "snapshot": st.fixed_dictionaries(
        {},
        optional={
            "camera": st.one_of(
                st.sampled_from(
                    [
                        *CAMERA_IDS,
                        "kitchen-2",
                        "",
                        "../../etc/passwd",
                        "kitchen-1/../x",
                        "kitchen-1\x00",
                        "KITCHEN-1",
                        "/dev/video0",
                    ]
                ),
                st.text(max_size=20),
                JSONISH,
            )
        },
    ),
    "resend": st.fixed_dictionaries({}, optional={"since": TIMES, "until": TIMES}),
}


def valid_minutes(minutes: object) -> bool:
    """What ``mute`` accepts: a number (not a boolean) from 0 to 1440."""
    return (
        isinstance(minutes, int | float)
        and not isinstance(minutes, bool)
        and 0 <= minutes <= MAX_MUTE_MINUTES
    )


@fuzz("command_args")
@given(
    command=st.sampled_from(COMMAND_NAMES),
    data=st.data(),
    request_id=st.text(min_size=1, max_size=128),
)
def test_command_arguments_of_every_type_are_handled(
    fuzzed_agent: FuzzedAgent, command: str, data: st.DataObject, request_id: str
) -> None:
    """Each command with arguments of every type does its job or refuses with a reason:
    mute takes exactly the numbers 0..1440, set only configured rules with values that
    validate, snapshot only known cameras; nothing else changes."""
    TRIED["command_args"] += 1
    args = data.draw(
        ARGS.get(command, st.dictionaries(st.text(max_size=8), JSONISH, max_size=3)), label="args"
    )
    body = run_command(
        f"command {command}",
        fuzzed_agent,
        as_json({"id": request_id, "command": command, "args": args}),
    )
    if body is None:
        return
    assert body["request_id"] == request_id
    result: Any = body.get("result")
    if command == "mute":
        assert body["ok"] == valid_minutes(args.get("minutes")), body
        if body["ok"]:
            if args["minutes"] == 0:
                assert result["muted_until"] is None, "0 ends the mute"
            elif args["minutes"] >= 0.1:  # a mute of microseconds may be over already
                assert result["muted_until"] is not None
    elif command == "snapshot":
        assert not body["ok"], "no camera has a frame: nothing to snapshot"
        camera = args.get("camera")
        known = isinstance(camera, str) and camera in CAMERA_IDS
        assert ("has no frame yet" if known else "unknown camera") in body["error"]
    elif command == "set" and body["ok"]:
        assert args["rule"] in RULE_NAMES
        stored = fuzzed_agent.agent.overrides.load().get(args["rule"], {})
        assert stored == json.loads(json.dumps(result["override"]))  # tuples stored as lists
        assert RuleConfig.model_validate(result["effective"])
    elif command == "resend" and body["ok"]:
        assert result == {"requeued": 0}  # no alert was ever stored
    elif command == "reload":
        assert body["ok"], body
        assert result["changed"] == [], "the file did not change"
    elif command in {"ping", "heartbeat", "status"}:
        assert body["ok"], body


RESPONSE_TOPICS = st.one_of(
    st.none(),
    st.text(max_size=600),
    st.sampled_from(
        [
            "",
            "#",
            "+",
            "a/+/b",
            "a/#",
            "platform/reply/1",
            "/",
            "//",
            "$SYS/x",
            "a" * 512,
            "a" * 513,
            "é" * 512,
        ]
    ),
)


@fuzz("response_topic")
@given(
    payload=st.sampled_from([VALID_PING, b'{"id": "r2", "command": "nope"}', b"\xff"]),
    topic=RESPONSE_TOPICS,
    correlation=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_reply_goes_to_a_publishable_response_topic_only(
    fuzzed_agent: FuzzedAgent, payload: bytes, topic: str | None, correlation: bytes | None
) -> None:
    """The reply goes to the MQTT 5 response topic when one can publish there (non-empty,
    no wildcard, at most 512 characters), else to <root>/command/reply; the correlation
    data always travels with it."""
    TRIED["response_topic"] += 1
    assert run_command("response_topic", fuzzed_agent, payload, topic, correlation)


# ---------------------------------------------------------------------- command bugs found


COMMAND_REPRODUCERS = [
    ("json-deep-nesting", b"[" * 1000 + b"]" * 1000),
    ("json-huge-int", b'{"id": "r1", "command": "ping", "args": {"n": ' + b"9" * 4301 + b"}}"),
    ("unhashable-command", b'{"id": "r1", "command": ["ping"]}'),
    (
        "unhashable-camera",
        b'{"id": "r1", "command": "snapshot", "args": {"camera": ["kitchen-1"]}}',
    ),
    (
        "mute-overflow",
        b'{"id": "r1", "command": "mute", "args": {"minutes": 1' + b"0" * 309 + b"}}",
    ),
    (
        "resend-overflow",
        b'{"id": "r1", "command": "resend", "args": {"since": 1' + b"0" * 309 + b"}}",
    ),
    (
        "duration-overflow",
        b'{"id": "r1", "command": "set", "args": {"rule": "no_hat", "cooldown": 1'
        + b"0" * 309
        + b"}}",
    ),
]


@pytest.mark.parametrize(
    "payload",
    [payload for _, payload in COMMAND_REPRODUCERS],
    ids=[n for n, _ in COMMAND_REPRODUCERS],
)
def test_known_command_crash_gets_an_error_reply(fuzzed_agent: FuzzedAgent, payload: bytes) -> None:
    """Minimal payloads that once crashed Commands.handle (no reply, no record): each gets
    an error reply that says what is wrong, not the edge's generic 'internal error'."""
    agent = fuzzed_agent.agent
    body = agent.commands.handle(payload)
    agent.outbox.ack_many([m.seq for m in agent.outbox.due(10)])
    assert body["ok"] is False
    assert body["error"]
    assert not body["error"].startswith("internal error"), body["error"]


def test_reload_of_a_file_that_crashes_the_parser_is_refused(fuzzed_agent: FuzzedAgent) -> None:
    """A reload (command or SIGHUP) of a config that once crashed parse_config is refused
    like any bad config (the TypeError used to escape Agent.reload and, under SIGHUP, end
    run() without its shutdown)."""
    agent = fuzzed_agent.agent
    assert agent.config_path is not None
    good = agent.config_path.read_text(encoding="utf-8")
    agent.config_path.write_text(good + "? [a, b]\n: 1\n", encoding="utf-8")
    try:
        with pytest.raises(ConfigError):
            agent.reload("SIGHUP")
    finally:
        agent.config_path.write_text(good, encoding="utf-8")


def test_every_known_bug_has_a_reproducer() -> None:
    """A KNOWN_BUGS entry is tolerated by the fuzzers only while a reproducer pins it."""
    pinned = {name for name, _ in CONFIG_REPRODUCERS} | {name for name, _ in COMMAND_REPRODUCERS}
    assert set(KNOWN_BUGS) <= pinned


# ---------------------------------------------------------------------- corrupted video

ERROR_CLASSES = {
    "not_found",
    "auth_failed",
    "refused",
    "timeout",
    "ended",
    "decode_error",
    "unreachable",
    "error",
}
HANG_AFTER = 30.0  # seconds: far above a slow machine's worst case for a 1.5 s clip
EDITS = st.lists(
    st.tuples(
        st.sampled_from(["overwrite", "truncate", "zero", "duplicate", "delete", "flip"]),
        st.integers(0, 2**16),
        st.integers(1, 4096),
        st.binary(min_size=1, max_size=64),
    ),
    min_size=1,
    max_size=4,
)


def corrupt(data: bytes, edits: Sequence[tuple[str, int, int, bytes]]) -> bytes:
    """``data`` with each (kind, offset, length, noise) corruption applied in turn."""
    out = bytearray(data)
    for kind, offset, length, noise in edits:
        if not out:
            break
        at = offset % len(out)
        end = min(len(out), at + length)
        if kind == "overwrite":
            out[at : at + len(noise)] = noise
        elif kind == "truncate":
            del out[at:]
        elif kind == "zero":
            out[at:end] = bytes(end - at)
        elif kind == "duplicate":
            out[at:at] = out[at:end]
        elif kind == "delete":
            del out[at:end]
        else:
            out[at] ^= noise[0] | 1
    return bytes(out)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A short real H.264 clip as MP4 and as MPEG-TS (a camera's own container), as bytes."""
    root = tmp_path_factory.mktemp("fuzz-clips")
    return {
        ext: make_clip(
            root / f"clip.{ext}", width=160, height=96, fps=10, seconds=1.5, gop=5
        ).read_bytes()
        for ext in ("mp4", "ts")
    }


def result_or_stream_error(call: Callable[[], T]) -> T | StreamError:
    """What ``call()`` returned, or the StreamError it raised; it must answer in time."""
    try:
        return within(HANG_AFTER, call)
    except StreamError as exc:
        return exc


def check_frames(frames: Sequence[np.ndarray]) -> None:
    """Decoded frames are BGR images."""
    for image in frames:
        assert image.dtype == np.uint8
        assert image.ndim == 3
        assert image.shape[2] == 3


@fuzz("stream_file")
@given(container=st.sampled_from(["mp4", "ts"]), edits=EDITS)
def test_corrupted_video_gives_frames_or_stream_error(
    clips: dict[str, bytes],
    config_dir: Path,
    container: str,
    edits: list[tuple[str, int, int, bytes]],
) -> None:
    """probe and grab_frames on a corrupted file return frames or raise a StreamError naming
    the file, in bounded time; never another exception."""
    TRIED["stream_file"] += 1
    path = config_dir / f"corrupt.{container}"
    path.write_bytes(corrupt(clips[container], edits))
    probed = result_or_stream_error(lambda: probe(str(path), seconds=1, timeout=5))
    OUTCOMES[f"probe: {'StreamError' if isinstance(probed, StreamError) else 'frames'}"] += 1
    if isinstance(probed, StreamError):
        assert str(probed).startswith(str(path)), probed
    else:
        assert probed.packets >= 1
        check_frames([probed.snapshot])
    grabbed = result_or_stream_error(lambda: grab_frames(str(path), count=3, seconds=1, timeout=5))
    OUTCOMES[f"grab_frames: {'StreamError' if isinstance(grabbed, StreamError) else 'frames'}"] += 1
    if isinstance(grabbed, StreamError):
        assert str(grabbed).startswith(str(path)), grabbed
    else:
        assert 1 <= len(grabbed) <= 3
        check_frames(grabbed)


class TracebackCollector(logging.Handler):
    """Keeps the messages logged with a traceback: a thread's crash, caught at its top."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            self.messages.append(record.getMessage())


@fuzz("camera_reader")
@given(edits=EDITS)
def test_camera_reader_survives_a_corrupted_file(
    clips: dict[str, bytes], config_dir: Path, edits: list[tuple[str, int, int, bytes]]
) -> None:
    """A CameraReader on a corrupted file decodes frames or records an error class; its
    thread logs no crash and stops when asked."""
    TRIED["camera_reader"] += 1
    path = config_dir / "camera.mp4"
    path.write_bytes(corrupt(clips["mp4"], edits))
    camera = parse_config(BOX + yaml.safe_dump({"cameras": {"cam": {"url": str(path)}}})).cameras[
        "cam"
    ]
    handler = TracebackCollector()
    ingest_logger = logging.getLogger("agent.ingest.reader")
    ingest_logger.addHandler(handler)
    stop, wake = threading.Event(), threading.Event()
    reader = CameraReader("cam", camera, stop=stop, slot=FrameSlot(wake))
    try:
        reader.start()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not wake.is_set():
            if reader.snapshot()["reconnects"]:
                break
            time.sleep(0.02)
        reader.tick()
        snap = reader.snapshot()
    finally:
        stop.set()
        stopped = reader.join(5.0)
        ingest_logger.removeHandler(handler)
    OUTCOMES[
        f"camera_reader: {'frames' if wake.is_set() else snap['last_error_class'] or snap['state']}"
    ] += 1
    assert stopped, "the reader thread did not stop"
    assert handler.messages == [], handler.messages
    assert snap["state"] in {s.value for s in CameraState}
    assert snap["last_error_class"] in ERROR_CLASSES | {""}
    assert wake.is_set() or snap["reconnects"] or snap["decoded"] == 0
