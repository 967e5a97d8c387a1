#!/usr/bin/env python3
"""Render the alarm's built-in Mandarin voice prompts into agent/sounds/*.wav with espeak-ng.

Run at build time on a development machine (``apt-get install espeak-ng``); the WAV files
are committed and shipped as package data, so the box itself needs no speech synthesiser.
A school's own recordings replace them through ``alarm.prompts`` in the config.

Example: .venv/bin/python scripts/tools/render_prompts.py
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import wave
from pathlib import Path

from agent.alarm.sounds import PROMPT_TEXTS

OUT = Path(__file__).resolve().parents[2] / "agent" / "sounds"


def render(text: str, target: Path, espeak: str, voice: str, speed: int) -> float:
    """Speak ``text`` into the WAV file ``target``; return its length in seconds.

    Raises:
        subprocess.CalledProcessError: espeak-ng failed.
    """
    subprocess.run(
        [espeak, "-v", voice, "-s", str(speed), "-w", str(target), text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with wave.open(str(target), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def main() -> int:
    """Render every prompt; exit non-zero when espeak-ng is missing or fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    parser.add_argument("--voice", default="cmn", help="espeak-ng voice (cmn: Mandarin)")
    parser.add_argument("--speed", type=int, default=150, help="words per minute")
    args = parser.parse_args()
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        print("error: espeak-ng not found (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for kind, text in PROMPT_TEXTS.items():
        target = args.out / f"{kind}.wav"
        try:
            seconds = render(text, target, espeak, args.voice, args.speed)
        except subprocess.CalledProcessError as exc:
            print(f"error: espeak-ng failed for {kind}: {exc.stderr!r}", file=sys.stderr)
            return 1
        print(f"{target}: {text} ({seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
