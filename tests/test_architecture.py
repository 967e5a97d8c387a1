"""The import contracts ([tool.importlinter] in pyproject.toml): each one fails when broken.

Each case copies the ``agent`` package to a temporary directory, appends one forbidden
import to a module of the guarded package, and runs ``lint-imports`` there with the
project's own contracts: it must exit non-zero, name the broken contract, and show the
import that was added (so the failure is the break, not something already in the tree).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


# An id line, then its name line, in each [[tool.importlinter.contracts]] table. (Python
# 3.10, still supported, has no tomllib; a table written otherwise fails the first test.)
CONTRACT = re.compile(
    r'^\[\[tool\.importlinter\.contracts\]\]\nid = "([^"]+)"\nname = "([^"]+)"$', re.MULTILINE
)


def contracts() -> dict[str, str]:
    """The contracts of pyproject.toml: id -> name (what lint-imports prints)."""
    text = PYPROJECT.read_text("utf-8")
    found = dict(CONTRACT.findall(text))
    assert len(found) == text.count("[[tool.importlinter.contracts]]"), "id, then name, first"
    return found


@dataclass(frozen=True)
class Break:
    """One forbidden import appended to one module, and the import line lint-imports shows."""

    contract: str  # the contract's id in pyproject.toml
    module: str  # path under the repository
    statement: str  # the import appended
    shown: str  # "importer -> imported" as lint-imports prints it

    def __str__(self) -> str:
        return f"{self.contract}:{self.module}:{self.statement}"


BREAKS = [
    Break(
        "rules-pure",
        "agent/rules/engine.py",
        "import paho.mqtt.client",
        "agent.rules.engine -> paho",
    ),
    Break("rules-pure", "agent/rules/zones.py", "import sqlite3", "agent.rules.zones -> sqlite3"),
    Break(
        "rules-pure",
        "agent/rules/engine.py",
        "from agent.evidence import Evidence",
        "agent.rules.engine -> agent.evidence",
    ),
    Break(
        "detect-no-stream-no-transport",
        "agent/detect/detector.py",
        "import av",
        "agent.detect.detector -> av",
    ),
    Break(
        "detect-no-stream-no-transport",
        "agent/detect/gate.py",
        "from agent.uplink import client",
        "agent.detect.gate -> agent.uplink.client",
    ),
    Break(
        "detect-no-store",
        "agent/detect/food.py",
        "from agent.store import outbox",
        "agent.detect.food -> agent.store.outbox",
    ),
    Break(
        "uplink-no-pipeline",
        "agent/uplink/messages.py",
        "from agent import evidence",
        "agent.uplink.messages -> agent.evidence",
    ),
    # Indirect: the uplink reaches cv2 only through the records every stage shares.
    Break("uplink-no-pipeline", "agent/records.py", "import cv2", "agent.records -> cv2"),
    Break(
        "store-no-mqtt",
        "agent/store/outbox.py",
        "import paho.mqtt.client",
        "agent.store.outbox -> paho",
    ),
    Break("cli-on-top", "agent/install/doctor.py", "import typer", "agent.install.doctor -> typer"),
    Break(
        "cli-on-top",
        "agent/service/agent.py",
        "from agent.cli import main",
        "agent.service.agent -> agent.cli.main",
    ),
    Break(
        "config-leaf",
        "agent/config/models.py",
        "from agent.detect import detector",
        "agent.config.models -> agent.detect.detector",
    ),
    Break(
        "web-no-pipeline",
        "agent/web/app.py",
        "from agent.service import agent",
        "agent.web.app -> agent.service.agent",
    ),
    Break(
        "web-on-top",
        "agent/install/doctor.py",
        "from agent.web import auth",
        "agent.install.doctor -> agent.web.auth",
    ),
    Break(
        "web-stack-in-web",
        "agent/service/web.py",
        "import starlette",
        "agent.service.web -> starlette",
    ),
]


def lint_imports(cwd: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with pyproject.toml's contracts on the ``agent`` package under ``cwd``
    (lint-imports puts its working directory first on the import path)."""
    selected = [arg for cid in contract_ids for arg in ("--contract", cid)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *selected, str(PYPROJECT)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_contract_has_a_case_that_breaks_it() -> None:
    """A contract added to pyproject.toml without a case here would never be shown to work."""
    assert set(contracts()) == {b.contract for b in BREAKS}


@pytest.mark.parametrize("case", BREAKS, ids=str)
def test_a_forbidden_import_breaks_its_contract(case: Break, tmp_path: Path) -> None:
    """The copied tree with one forbidden import appended: lint-imports exits non-zero, calls
    that contract BROKEN and shows the appended import (its line number included)."""
    shutil.copytree(
        REPO / "agent", tmp_path / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.wav")
    )
    target = tmp_path / case.module
    text = target.read_text("utf-8")
    target.write_text(f"{text.rstrip()}\n{case.statement}\n", "utf-8")
    line = len(target.read_text("utf-8").splitlines())
    name = contracts()[case.contract]

    result = lint_imports(tmp_path, case.contract)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{name} BROKEN" in output, output
    assert f"{case.shown} (l.{line})" in output, output


def test_the_real_tree_keeps_every_contract() -> None:
    """The working tree keeps all the contracts.

    Depends on the other refactoring steps being done (agent.config importing no detect
    module, detect.food importing no store): it fails until they are, naming the chain.
    """
    result = lint_imports(REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"Contracts: {len(contracts())} kept, 0 broken." in output, output
