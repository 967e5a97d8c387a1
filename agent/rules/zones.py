"""Zone geometry for the rules: is a detection in a camera zone, or in an excluded area?

Coordinates are normalised (0..1 from the top-left), like detection boxes, so zones drawn
on one resolution hold for the sub and main streams alike.

Two ways a box can be "in" a zone, chosen per rule (``zone_anchor``):

* ``bottom_center`` (default): the middle of the box's bottom edge is inside the polygon.
  That is where a standing person meets the floor, or where a tray rests on a counter,
  so it places the object on the floor plan the zone was drawn on; the top of a tall box
  reaching into a neighbouring zone does not count.
* ``overlap``: at least ``min_overlap`` of the box's area lies inside the polygon. Better
  for objects seen from above or larger than the zone's border precision (food trays in
  a serving line), where a single point is too brittle.

Exclusion areas (posters, TVs, mirrors) always use overlap >= 0.5: a face printed on a
poster is wholly inside the area whatever its anchor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Point = tuple[float, float]
Box = tuple[float, float, float, float]

EXCLUDE_OVERLAP = 0.5


def point_in_polygon(x: float, y: float, polygon: Sequence[Point]) -> bool:
    """Even-odd rule; a point exactly on an edge may fall either way."""
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < cross:
                inside = not inside
    return inside


def polygon_area(polygon: Sequence[Point]) -> float:
    """Unsigned area (shoelace)."""
    total = 0.0
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        total += x1 * y2 - x2 * y1
    return abs(total) / 2


def _clip(
    polygon: list[Point],
    inside: Callable[[Point], bool],
    intersect: Callable[[Point, Point], Point],
) -> list[Point]:
    # One Sutherland-Hodgman pass against one edge of the box.
    out: list[Point] = []
    n = len(polygon)
    for i in range(n):
        current, previous = polygon[i], polygon[i - 1]
        if inside(current):
            if not inside(previous):
                out.append(intersect(previous, current))
            out.append(current)
        elif inside(previous):
            out.append(intersect(previous, current))
    return out


def overlap(box: Box, polygon: Sequence[Point]) -> float:
    """Share of ``box``'s area inside ``polygon`` (0..1).

    The polygon (convex or not) is clipped to the box rectangle (Sutherland-Hodgman against
    a convex window is exact in area for any simple polygon), then measured.
    """
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)
    if area <= 0:
        return 0.0

    def at_x(x: float) -> Callable[[Point, Point], Point]:
        def cut(p: Point, q: Point) -> Point:
            t = (x - p[0]) / (q[0] - p[0])
            return (x, p[1] + t * (q[1] - p[1]))

        return cut

    def at_y(y: float) -> Callable[[Point, Point], Point]:
        def cut(p: Point, q: Point) -> Point:
            t = (y - p[1]) / (q[1] - p[1])
            return (p[0] + t * (q[0] - p[0]), y)

        return cut

    clipped = list(polygon)
    edges: tuple[tuple[Callable[[Point], bool], Callable[[Point, Point], Point]], ...] = (
        (lambda p: p[0] >= x1, at_x(x1)),
        (lambda p: p[0] <= x2, at_x(x2)),
        (lambda p: p[1] >= y1, at_y(y1)),
        (lambda p: p[1] <= y2, at_y(y2)),
    )
    for inside, cut in edges:
        clipped = _clip(clipped, inside, cut)
        if not clipped:
            return 0.0
    return min(1.0, polygon_area(clipped) / area)


def box_in_zone(
    box: Box, polygon: Sequence[Point], anchor: str = "bottom_center", min_overlap: float = 0.5
) -> bool:
    """Whether ``box`` counts as in the zone under the rule's anchor."""
    if anchor == "overlap":
        return overlap(box, polygon) >= min_overlap
    x1, _y1, x2, y2 = box
    return point_in_polygon((x1 + x2) / 2, y2, polygon)


def excluded(box: Box, areas: Sequence[Sequence[Point]]) -> bool:
    """Whether at least half of ``box`` lies in one of the exclusion ``areas``."""
    return any(overlap(box, area) >= EXCLUDE_OVERLAP for area in areas)
