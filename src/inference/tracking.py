"""Following objects across the frames of a video: a small ByteTrack-style tracker.

Each frame's detections are assigned to the tracks of earlier frames by the Hungarian method
(``scipy.optimize.linear_sum_assignment``), in three rounds:

1. confident detections (score >= ``high``) to every live track, by the overlap (IoU) of the
   detection with the track's predicted box (constant velocity), helped by colour appearance
   and category;
2. what is left of the tracks seen in the previous frame to the weak detections
   (``low`` <= score < ``high``): ByteTrack's idea, an object half hidden at a crossing keeps
   its track instead of losing it;
3. confident detections still unassigned to tracks lost for a while (up to ``buffer`` frames),
   by appearance alone (a colour histogram, as DeepSORT's re-identification with a
   hand-made feature): an object that left the frame, or was hidden, gets its id back.

A confident detection assigned to no track starts one; a track is shown (and given the next
id) once it was seen in ``min_hits`` frames in a row. A shown track missed for a few frames
(``coast``) is still shown where it is expected, while that is in the frame: a detection
missed now and then does not break its line. Its category is the one with the most
score over its detections, so a label that flickers does not split it.

Boxes are ltrb pixels of the frame. Nothing here imports torch.
"""
from collections import Counter, deque
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

UNMATCHED = 1e6  # the cost of a pair that may not be matched


@dataclass
class Track:
    """One object followed through the frames. ``id`` is 0 until the track is confirmed."""
    box: np.ndarray                      # (4,) ltrb pixels, the last detection's
    score: float                         # the last detection's
    appearance: np.ndarray | None        # colour histogram, a running average
    trail_length: int
    id: int = 0
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))  # ltrb pixels per frame
    hits: int = 1                        # frames in a row with a detection, until confirmed
    missed: int = 0                      # frames since the last detection
    votes: Counter = field(default_factory=Counter)  # label -> summed score
    names: dict = field(default_factory=dict)        # label -> name
    trail: deque = None                  # centres (x, y) of the last detections

    def __post_init__(self):
        self.trail = deque(maxlen=self.trail_length)
        self.trail.append(self.centre)

    @property
    def centre(self) -> tuple[float, float]:
        return Track._centre(self.box)

    @staticmethod
    def _centre(box) -> tuple[float, float]:
        return float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2

    @property
    def label(self) -> int:
        return self.votes.most_common(1)[0][0]

    @property
    def name(self) -> str:
        return self.names[self.label]

    def predicted(self) -> np.ndarray:
        """Where the box is expected in the next frame (constant velocity)."""
        return self.box + self.velocity * (self.missed + 1)

    @property
    def shown_box(self) -> np.ndarray:
        """The box of this frame: its detection's, or where it is expected while missed."""
        return self.box + self.velocity * self.missed

    def add(self, box, label, name, score, appearance):
        gap = self.missed + 1
        dx, dy = (np.asarray(Track._centre(box)) - np.asarray(self.centre)) / gap
        step = np.array([dx, dy, dx, dy], np.float32)  # the centre moves; the size is the detection's
        if gap > 10:  # back after a long gap (out of view, hidden): the old motion is stale
            self.velocity = np.zeros(4, np.float32)
        else:  # the first step sets the velocity; later ones smooth it
            self.velocity = step if self.hits == 1 else 0.6 * self.velocity + 0.4 * step
        self.box, self.score, self.missed = box, score, 0
        self.votes[label] += score
        self.names[label] = name
        if appearance is not None:
            self.appearance = appearance if self.appearance is None else 0.8 * self.appearance + 0.2 * appearance
        self.trail.append(self.centre)


def _may_coast(track: Track, size) -> bool:
    """Whether a missed track is shown at its expected box: its last detection was clear of the
    frame's edges (one at an edge was probably leaving) and the expected box is inside."""
    if size is None:
        return True
    w, h = size
    margin = 0.01 * max(w, h)
    last, box = track.box, track.shown_box
    return bool(last[0] > margin and last[1] > margin and last[2] < w - margin and last[3] < h - margin
                and box[0] >= 0 and box[1] >= 0 and box[2] <= w and box[3] <= h)


def appearance_of(image_rgb: np.ndarray, box) -> np.ndarray | None:
    """A colour histogram (hue x saturation, L1-normalised) of the middle of ``box``; None
    for a box with no pixels inside the image."""
    h, w = image_rgb.shape[:2]
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * 0.2, (y1 - y0) * 0.2  # the middle: less background
    x0, y0 = int(max(0, x0 + mx)), int(max(0, y0 + my))
    x1, y1 = int(min(w, x1 - mx)), int(min(h, y1 - my))
    if x1 <= x0 or y1 <= y0:
        return None
    hsv = cv2.cvtColor(np.ascontiguousarray(image_rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [16, 4], [0, 180, 0, 256]).reshape(-1)
    return (hist / max(hist.sum(), 1.0)).astype(np.float32)


def appearance_distances(a: list, b: list) -> np.ndarray:
    """Bhattacharyya distances (OpenCV's ``HISTCMP_BHATTACHARYYA`` for L1-normalised histograms)
    of every pair: 0 the same colours, 1 nothing in common, 1 where a histogram is None.
    (n,), (m,) lists -> (n, m)."""
    out = np.ones((len(a), len(b)), np.float32)
    rows = [i for i, h in enumerate(a) if h is not None]
    cols = [j for j, h in enumerate(b) if h is not None]
    if rows and cols:
        root_a = np.sqrt(np.stack([a[i] for i in rows]))  # (n', bins)
        root_b = np.sqrt(np.stack([b[j] for j in cols]))
        out[np.ix_(rows, cols)] = np.sqrt(np.clip(1.0 - root_a @ root_b.T, 0.0, None))
    return out


def _side(boxes: np.ndarray) -> np.ndarray:
    """The geometric mean side of each ltrb box: (n, 4) -> (n,)."""
    return np.sqrt(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(axis=1))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of ltrb boxes: (n, 4), (m, 4) -> (n, m)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (n, m, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, column) of least total cost, without the pairs that may not be matched."""
    if cost.size == 0:
        return []
    rows, cols = linear_sum_assignment(cost)
    return [(r, c) for r, c in zip(rows.tolist(), cols.tolist()) if cost[r, c] < UNMATCHED]


class Tracker:
    """Ids for the objects of a video, frame by frame (see the module's description).

    :param high: score from which a detection is confident: matched first, with appearance
    :param low: the least score of a detection used at all (below ``high``, it only extends a track)
    :param new: the least score of a detection that starts a track (ByteTrack's ``high + 0.1``)
    :param iou_threshold: least IoU of a detection with a track's predicted box to join it
    :param buffer: frames a lost track waits to be found again
    :param min_hits: frames in a row a new track needs to be shown
    :param reid_threshold: largest appearance distance to give a lost track back its id
    :param coast: frames a shown track stays shown, at its expected box, without a detection
    :param trail: centres kept for drawing each track's trail
    """

    def __init__(self, high=0.5, low=0.1, new=None, iou_threshold=0.3, buffer=60, min_hits=2, reid_threshold=0.35,
                 coast=5, trail=30):
        self.high, self.low, self.iou_threshold, self.coast = high, low, iou_threshold, coast
        self.new = min(high + 0.1, 1.0) if new is None else new
        self.buffer, self.min_hits, self.reid_threshold, self.trail = buffer, min_hits, reid_threshold, trail
        self.tracks: list[Track] = []
        self.frame = 0
        self.next_id = 1
        self.seen: dict[int, Track] = {}  # id -> track, every track ever shown

    def update(self, detections, image_rgb: np.ndarray | None = None) -> list[Track]:
        """Take one frame's detections (:class:`~src.inference.detections.Detections`, boxes in
        pixels of ``image_rgb``, the frame, which gives the colours and the frame's bounds);
        returns the tracks shown in this frame, each with its id and ``shown_box``."""
        boxes = np.asarray(detections.boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(detections.scores, np.float32).reshape(-1)
        labels = np.asarray(detections.labels).reshape(-1).tolist()
        keep = scores >= self.low
        idx = np.flatnonzero(keep)
        feats = [appearance_of(image_rgb, boxes[i]) if image_rgb is not None and keep[i] else None
                 for i in range(len(boxes))]
        strong = [i for i in idx if scores[i] >= self.high]
        weak = [i for i in idx if scores[i] < self.high]
        matched: dict[int, int] = {}  # track index -> detection index

        # 1. confident detections to every live track: overlap with the prediction, appearance, category
        pairs = self._match(list(range(len(self.tracks))), strong, boxes, labels, feats, use_appearance=True)
        matched.update(pairs)
        # 2. tracks seen in the last frame to the weak detections, by overlap
        recent = [t for t in range(len(self.tracks)) if t not in matched and self.tracks[t].missed == 0]
        matched.update(self._match(recent, weak, boxes, labels, feats, use_appearance=False))
        # 3. lost tracks to the confident detections left, by appearance (an object back in view)
        used = set(matched.values())
        left = [i for i in strong if i not in used]
        lost = [t for t in range(len(self.tracks)) if t not in matched and self.tracks[t].missed > 0
                and self.tracks[t].id]
        matched.update(self._reidentify(lost, left, boxes, feats))

        for t, d in matched.items():
            track = self.tracks[t]
            track.add(boxes[d], labels[d], detections.names[d], float(scores[d]), feats[d])
            track.hits += 1
        self._age(set(matched))
        used = set(matched.values())
        for d in strong:
            if d not in used and scores[d] >= self.new:
                track = Track(boxes[d].copy(), float(scores[d]), feats[d], self.trail)
                track.votes[labels[d]] += float(scores[d])
                track.names[labels[d]] = detections.names[d]
                self.tracks.append(track)
        for track in self.tracks:
            if not track.id and track.missed == 0 and (track.hits >= self.min_hits or self.frame == 0):
                track.id, self.next_id = self.next_id, self.next_id + 1
                self.seen[track.id] = track
        self.frame += 1
        size = image_rgb.shape[1::-1] if image_rgb is not None else None
        return [t for t in self.tracks if t.id and (t.missed == 0 or (t.missed <= self.coast and
                                                                      _may_coast(t, size)))]

    def _match(self, tracks, dets, boxes, labels, feats, use_appearance) -> dict[int, int]:
        if not tracks or not dets:
            return {}
        predicted = np.stack([self.tracks[t].predicted() for t in tracks])
        iou = iou_matrix(predicted, boxes[dets])  # (T, D)
        other = np.array([[labels[d] not in self.tracks[t].votes for d in dets] for t in tracks])
        cost = 1.0 - iou + 0.3 * other  # another category: only when nothing else fits
        if use_appearance:
            cost += 0.5 * appearance_distances([self.tracks[t].appearance for t in tracks], [feats[d] for d in dets])
        cost[iou < self.iou_threshold] = UNMATCHED
        return {tracks[a]: dets[b] for a, b in assign(cost)}

    def _reidentify(self, tracks, dets, boxes, feats) -> dict[int, int]:
        if not tracks or not dets:
            return {}
        dist = appearance_distances([self.tracks[t].appearance for t in tracks], [feats[d] for d in dets])  # (T, D)
        ratio = _side(boxes[dets])[None, :] / np.maximum(_side(np.stack([self.tracks[t].box for t in tracks])),
                                                         1e-6)[:, None]  # (T, D)
        fits = (dist <= self.reid_threshold) & (ratio >= 0.5) & (ratio <= 2.0)  # alike, and of a like size
        cost = np.where(fits, dist, UNMATCHED)
        return {tracks[a]: dets[b] for a, b in assign(cost)}

    def _age(self, matched: set[int]):
        """Unmatched tracks miss a frame; a new one missing a frame, or a lost one past the
        buffer, is dropped."""
        alive = []
        for t, track in enumerate(self.tracks):
            if t not in matched:
                track.missed += 1
                if not track.id:
                    continue
            if track.missed <= self.buffer:
                alive.append(track)
        self.tracks = alive

    def counts(self) -> dict[str, int]:
        """Distinct objects followed so far, per category name."""
        return dict(Counter(track.name for track in self.seen.values()))
