"""Evidence snapshots: what ``render`` draws (zones, boxes, Chinese caption) and ``prune``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest

from agent import evidence
from agent.config import EvidenceConfig
from agent.evidence import PruneResult, caption_text, format_stamp, prune, render, save
from agent.records import Detection
from agent.rules.engine import Alert

SAMPLE_VIDEO = (
    Path(__file__).resolve().parents[1].parent / "shared/videos/bareheaded_people_indoor.mp4"
)
RAISED_AT = 1764187200.0  # 2025-11-26T20:00:00Z = 2025-11-27 04:00 in Shanghai
SHANGHAI = ZoneInfo("Asia/Shanghai")
GREY = 128
ZONE = ((0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6))
EXCLUDED = ((0.7, 0.1), (0.95, 0.1), (0.95, 0.5), (0.7, 0.5))


def make_alert(frame: np.ndarray | None = None, detections: tuple[Detection, ...] = ()) -> Alert:
    return Alert(
        id="a1b2c3",
        type="no_hat",
        severity="warning",
        camera_id="kitchen-1",
        started_at=RAISED_AT - 5,
        raised_at=RAISED_AT,
        confidence=0.9,
        detections=detections,
        frame=frame,
    )


def grey_frame(width: int = 640, height: int = 360) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def real_frame() -> np.ndarray:
    """A frame of the shared indoor video (a room seen from above, like a canteen camera)."""
    if not SAMPLE_VIDEO.exists():
        pytest.skip(f"{SAMPLE_VIDEO} is missing (../shared)")
    capture = cv2.VideoCapture(str(SAMPLE_VIDEO))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 300)
    ok, frame = capture.read()
    capture.release()
    assert ok
    return np.asarray(frame)


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return np.asarray(image)


def caption_height(image: np.ndarray) -> int:
    """Rows of the black caption box at the bottom-left corner of a grey picture."""
    column = image[::-1, 1].astype(int).sum(axis=1)
    dark = column < 90
    return int(np.argmin(dark)) if not dark.all() else len(column)


@pytest.fixture
def cjk_font() -> Path:
    """The CJK font the box would use; the test fails (not skips) without it."""
    found = evidence.find_font(None)
    if found is None:
        pytest.fail("no CJK font: apt-get install fonts-wqy-microhei (scripts/bootstrap)")
    return found


@pytest.fixture
def no_font(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[EvidenceConfig]:
    """A box without any CJK font: none at the known paths, and the configured one missing."""
    monkeypatch.setattr(evidence, "FONT_PATHS", ())
    evidence._find_font.cache_clear()
    yield EvidenceConfig(font=tmp_path / "missing.ttc")
    evidence._find_font.cache_clear()


def test_caption_text_names_camera_type_and_time_in_the_given_zone() -> None:
    """The caption has the display name, the type and the time in the box's zone with offset."""
    text = caption_text("kitchen-1", "后厨操作间", "no_hat", RAISED_AT, SHANGHAI)
    assert text == "后厨操作间  no_hat  2025-11-27 04:00:00 +08:00"
    assert format_stamp(RAISED_AT, timezone.utc) == "2025-11-26 20:00:00 +00:00"
    assert format_stamp(RAISED_AT, timezone(timedelta(hours=-5))) == "2025-11-26 15:00:00 -05:00"


def test_caption_text_falls_back_to_the_camera_id() -> None:
    """No name, or a Chinese name without a Chinese font, gives the camera id instead."""
    assert caption_text("kitchen-1", "", "no_mask", RAISED_AT, SHANGHAI).startswith("kitchen-1  ")
    ascii_text = caption_text(
        "kitchen-1", "后厨操作间", "no_hat", RAISED_AT, SHANGHAI, ascii_only=True
    )
    assert ascii_text.startswith("kitchen-1  no_hat  ")
    assert ascii_text.isascii()
    assert caption_text("k1", "Hot kitchen", "no_hat", 0, timezone.utc, ascii_only=True).startswith(
        "Hot kitchen"
    )


def test_chinese_name_is_drawn_with_real_glyphs(cjk_font: Path) -> None:
    """Two Chinese names give different caption pixels (OpenCV would draw '?????' for both),
    and the rest of the picture is identical."""
    frame = real_frame()
    config = EvidenceConfig()
    one = decode(render(make_alert(frame), frame, config, camera_name="后厨操作间")[0])
    other = decode(render(make_alert(frame), frame, config, camera_name="后厨备餐间")[0])
    height = one.shape[0]
    diff = np.abs(one.astype(int) - other.astype(int)).sum(axis=2)
    changed_rows = np.nonzero(diff.max(axis=1) > 60)[0]
    assert changed_rows.size > 0, "the two names were drawn alike: no Chinese glyphs"
    assert changed_rows.min() > height * 0.85, "only the caption band may differ"
    band = one[changed_rows.min() :, :]
    assert (band.min(axis=2) > 200).sum() > 100, "no white caption text"


def test_render_keeps_existing_callers_working() -> None:
    """render(alert, frame, config) still works and leaves the caller's frame untouched."""
    frame = grey_frame()
    det = Detection("head_bare", 3, 0.87, (0.4, 0.2, 0.5, 0.4))
    jpeg, width, height = render(make_alert(frame, (det,)), frame, EvidenceConfig())
    assert (width, height) == (640, 360)
    assert (frame == GREY).all()
    image = decode(jpeg)
    x1, y1 = round(0.4 * 640), round(0.4 * 360)
    assert image[y1, x1 + 20, 2] > 200 > image[y1, x1 + 20, 0]  # red box edge (BGR)


def test_zone_outline_is_drawn_along_the_polygon() -> None:
    """Points along the zone's edges turn yellow; inside and outside stay background."""
    frame = grey_frame()
    image = decode(render(make_alert(frame), frame, EvidenceConfig(), zone=ZONE)[0])
    for x, y in ((0.4, 0.2), (0.6, 0.4), (0.4, 0.6), (0.2, 0.4), (0.3, 0.2), (0.6, 0.5)):
        b, g, r = (int(v) for v in image[round(y * 360), round(x * 640)])
        assert min(g, r) - b > 120, f"not yellow at {(x, y)}: {(b, g, r)}"
    for x, y in ((0.4, 0.4), (0.1, 0.1), (0.8, 0.8)):
        assert abs(int(image[round(y * 360), round(x * 640)].mean()) - GREY) < 12


def test_excluded_zones_are_hatched_inside_only() -> None:
    """An excluded zone gets stripes inside it; the picture outside is unchanged."""
    frame = grey_frame()
    plain = decode(render(make_alert(frame), frame, EvidenceConfig())[0]).astype(int)
    image = decode(render(make_alert(frame), frame, EvidenceConfig(), excluded=[EXCLUDED])[0])
    diff = np.abs(image.astype(int) - plain).sum(axis=2) > 30
    inside = diff[round(0.15 * 360) : round(0.45 * 360), round(0.75 * 640) : round(0.9 * 640)]
    assert 0.08 < inside.mean() < 0.6, "stripes, not a filled or empty area"
    outside = diff[: round(0.8 * 360), : round(0.6 * 640)]
    assert not outside.any()


@pytest.mark.usefixtures("cjk_font")
def test_caption_stays_legible_and_scales_with_width() -> None:
    """The caption is at least 20 px high at 640x360 and about three times that at 1920x1080,
    and a long name is shrunk to fit the picture rather than cut off."""
    config = EvidenceConfig(max_width=1920)
    small = decode(render(make_alert(), grey_frame(640, 360), config, camera_name="后厨操作间")[0])
    large = decode(
        render(make_alert(), grey_frame(1920, 1080), config, camera_name="后厨操作间")[0]
    )
    small_h, large_h = caption_height(small), caption_height(large)
    assert small_h >= 20
    assert large_h >= 2.5 * small_h
    long_name = "某某区实验小学第二食堂后厨操作间东侧灶台" * 2
    image = decode(render(make_alert(), grey_frame(640, 360), config, camera_name=long_name)[0])
    bottom = image[-5].astype(int).sum(axis=1)
    assert (bottom < 90).sum() < 640, "the caption box must end before the right edge"


def test_without_a_cjk_font_the_camera_id_is_drawn_and_logged_once(
    no_font: EvidenceConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """No CJK font: the caption is drawn with OpenCV (camera id for the Chinese name, so two
    Chinese names render the same) and the missing font is logged only once."""
    frame = grey_frame()
    with caplog.at_level(logging.WARNING, logger="agent.evidence"):
        one = decode(render(make_alert(frame), frame, no_font, camera_name="后厨操作间")[0])
        other = decode(render(make_alert(frame), frame, no_font, camera_name="后厨备餐间")[0])
    missing = [r for r in caplog.records if "no font with Chinese glyphs" in r.getMessage()]
    assert len(missing) == 1
    assert np.array_equal(one, other)
    assert caption_height(one) >= 14
    band = one[-caption_height(one) :, :200]
    assert (band.min(axis=2) > 200).sum() > 50, "the camera id is drawn in white"


def test_save_uses_the_time_zone_for_the_day_folder(tmp_path: Path) -> None:
    """save passes the keyword arguments through; the day folder is the date in ``tz``."""
    frame = grey_frame()
    shanghai = save(make_alert(frame), frame, EvidenceConfig(), tmp_path, tz=SHANGHAI, zone=ZONE)
    utc = save(make_alert(frame), frame, EvidenceConfig(), tmp_path / "u", tz=timezone.utc)
    assert shanghai.path == tmp_path / "2025-11-27" / "a1b2c3.jpg"
    assert utc.path == tmp_path / "u" / "2025-11-26" / "a1b2c3.jpg"
    assert shanghai.path.read_bytes() == shanghai.jpeg
    assert shanghai.jpeg != utc.jpeg  # the zone outline and the time differ
    assert not list(tmp_path.rglob("*.tmp"))


# --------------------------------------------------------------------------- prune

NOW = 1_800_000_000.0
DAY = 86400.0


def put(root: Path, relative: str, size: int, age_days: float) -> Path:
    """A file of ``size`` bytes whose modification time is ``age_days`` before NOW."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff" * size)
    mtime = NOW - age_days * DAY
    os.utime(path, (mtime, mtime))
    return path


def test_prune_deletes_by_age_and_removes_empty_day_folders(tmp_path: Path) -> None:
    """Files older than keep_days go, newer ones stay, and a day folder left empty is removed."""
    old_a = put(tmp_path, "2026-01-01/a.jpg", 1000, 40)
    old_b = put(tmp_path, "2026-01-01/b.jpg", 500, 31)
    mixed_old = put(tmp_path, "2026-01-10/c.jpg", 200, 30.5)
    mixed_new = put(tmp_path, "2026-01-10/d.jpg", 300, 29.5)
    new = put(tmp_path, "2026-02-05/e.jpg", 400, 1)
    result = prune(tmp_path, keep_days=30, max_total_bytes=10**9, now=NOW)
    assert result == PruneResult(3, 1700, NOW - 29.5 * DAY)
    assert not old_a.exists()
    assert not old_b.exists()
    assert not mixed_old.exists()
    assert mixed_new.exists()
    assert new.exists()
    assert not (tmp_path / "2026-01-01").exists()
    assert tmp_path.is_dir()  # the evidence directory itself stays


def test_prune_deletes_oldest_first_down_to_the_size_cap(tmp_path: Path) -> None:
    """Over the total size, the oldest files go first until the rest fits."""
    files = [put(tmp_path, f"2026-02-0{i}/{i}.jpg", 1000, 10 - i) for i in range(1, 6)]
    result = prune(tmp_path, keep_days=30, max_total_bytes=2500, now=NOW)
    assert (result.files_removed, result.bytes_removed) == (3, 3000)
    assert [f.exists() for f in files] == [False, False, False, True, True]
    assert result.oldest_kept == NOW - 6 * DAY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-02-04", "2026-02-05"]


def test_prune_leaves_young_tmp_files_alone(tmp_path: Path) -> None:
    """A *.tmp younger than an hour is being written: not deleted and not counted; an old one
    is a leftover and goes."""
    young = put(tmp_path, "2026-02-05/x.jpg.tmp", 5000, 0.5 / 24)
    stale = put(tmp_path, "2026-02-04/y.jpg.tmp", 100, 2 / 24)
    kept = put(tmp_path, "2026-02-05/z.jpg", 1000, 0.1)
    result = prune(tmp_path, keep_days=30, max_total_bytes=1500, now=NOW)
    assert young.exists()
    assert kept.exists()
    assert not stale.exists()
    assert (result.files_removed, result.bytes_removed) == (1, 100)
    assert result.oldest_kept == pytest.approx(NOW - 0.1 * DAY)


def test_prune_of_a_missing_or_empty_directory_does_nothing(tmp_path: Path) -> None:
    """No evidence yet: nothing removed, nothing kept, no error."""
    assert prune(tmp_path / "none", keep_days=1, max_total_bytes=0, now=NOW) == PruneResult(
        0, 0, None
    )
    (tmp_path / "2026-01-01").mkdir()
    assert prune(tmp_path, keep_days=1, max_total_bytes=0, now=NOW) == PruneResult(0, 0, None)
    assert not (tmp_path / "2026-01-01").exists()


def test_prune_skips_symlinks(tmp_path: Path) -> None:
    """A symlink is neither followed nor deleted: retention touches only real evidence files."""
    outside = tmp_path / "outside"
    target = put(outside, "keep.jpg", 100, 100)
    evidence_dir = tmp_path / "evidence"
    (evidence_dir / "2026-01-01").mkdir(parents=True)
    link = evidence_dir / "2026-01-01" / "link.jpg"
    link.symlink_to(target)
    result = prune(evidence_dir, keep_days=1, max_total_bytes=0, now=NOW)
    assert result.files_removed == 0
    assert target.exists()
    assert link.is_symlink()
