"""The study figure's labels: beside their points, never on another label, a marker or an error bar."""

import itertools

from mat_dist.reproduce.figure_labels import Box, place_labels

AXES = Box(0, 0, 600, 400)


def marker(x, y):
    return Box(x - 4, y - 4, x + 4, y + 4)


def test_a_lone_label_sits_right_of_its_point_at_its_height():
    (spot,) = place_labels([(100, 200)], [(40, 10)], [marker(100, 200)], AXES)
    assert (spot.side, spot.x, spot.y, spot.free) == (1, 108, 200, True)
    assert spot.box == Box(108, 195, 148, 205)


def test_a_label_goes_left_when_the_right_is_taken_or_outside_the_axes():
    wall = Box(105, 150, 300, 250)  # e.g. a neighbour's error bar and label
    (spot,) = place_labels([(100, 200)], [(40, 10)], [marker(100, 200), wall], AXES)
    assert (spot.side, spot.y, spot.box.x1) == (-1, 200, 92)
    (edge,) = place_labels([(590, 200)], [(40, 10)], [marker(590, 200)], AXES)
    assert edge.side == -1 and edge.box.inside(AXES)


def test_a_column_of_methods_at_one_cost_gets_disjoint_labels_near_their_points():
    # The study's case: fifteen methods at one cost (two columns 12 px apart on the log axis), their unions within
    # a few pixels of each other, error bars overlapping.
    points = [(300 + 12 * (i % 2), 200 + 3 * i) for i in range(15)]
    sizes = [(60, 10)] * 15
    obstacles = [marker(x, y) for x, y in points] + [Box(x - 3, y - 30, x + 3, y + 30) for x, y in points]
    spots = place_labels(points, sizes, obstacles, AXES)
    assert all(s.free and s.box.inside(AXES) for s in spots)
    for a, b in itertools.combinations(spots, 2):
        assert a.box.overlap(b.box) == 0
    for s in spots:
        assert all(s.box.overlap(o) == 0 for o in obstacles)
    # Near: within the reach of twelve label heights of its point, and both sides used.
    assert all(abs(s.y - y) <= 12 * 11 for s, (_, y) in zip(spots, points))
    assert {s.side for s in spots} == {1, -1}


def test_with_no_free_spot_the_least_crowded_one_is_taken_and_said_so():
    crowd = [Box(0, 0, 600, 400)]  # the whole axes is covered
    (spot,) = place_labels([(300, 200)], [(40, 10)], crowd, AXES)
    assert spot.free is False and spot.box.inside(AXES)
