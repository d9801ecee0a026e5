"""A small, deterministic driving-scene dataset in the BDD100K layout.

It stands in for BDD100K where the real data is not available (the demo, the
tests, smoke checks): the same folders, the official bitmask label format and
a COCO json made by the official converter, at a reduced resolution so that
a model trains on 2 CPU cores in minutes.

Layout under the output folder::

    images/10k/{train,val,test}/<name>.jpg
    labels/ins_seg/bitmasks/{train,val}/<name>.png
    labels/ins_seg/rles/ins_seg_{train,val}.json   # the same GT, RLE json
    jsons/ins_seg_{train,val}_cocofmt.json
    sample_info.json      # what was generated (seed, counts, size, mix)

Scenes: sky, buildings and trees on the horizon, a road with lane marks and
sidewalks in perspective, sensor noise; cars, trucks, buses, pedestrians,
riders on motorcycles and bicycles, drawn as simple shapes whose size follows
the ground plane (far = small), painted far to near so that near objects
occlude far ones. Groups of far pedestrians are labeled as one crowd region
(crowd and ignore bits), like BDD100K does. The class "train" does not occur
(it is also very rare in BDD100K). How many of each a scene holds, and how
bright it is, is the scene mix (:data:`SCENE_MIXES`): the demo's sunny road
of mostly cars, or a dim city street of more people, riders and buses.

The same seed gives the same bytes: every image has its own random stream
derived from (seed, split, index), JPEGs are written at a fixed quality.
"""
import hashlib
import json
import os
import os.path as osp
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Category ids of the official ins_seg config (1..8).
PEDESTRIAN, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(1, 9)

#: Bitmask attribute bits (the G channel).
TRUNCATED, OCCLUDED, CROWD, IGNORE = 1 << 3, 1 << 2, 1 << 1, 1 << 0

#: Default image size (width, height): 5:3 like a crop of BDD100K's 16:9,
#: both sides multiples of 32 so no padding is needed.
DEFAULT_SIZE = (320, 192)
DEFAULT_COUNTS = dict(train=300, val=60, test=20)
JPEG_QUALITY = 90
INFO_FILE = 'sample_info.json'
#: Bump when the scenes change, so that an old sample is regenerated.
GENERATOR_VERSION = 2

SPLIT_IDS = dict(train=0, val=1, test=2)

#: What a scene holds, by mix: cars and pedestrians drawn uniformly from
#: [low, high), trucks and two-wheelers (with or without a rider) Poisson
#: with this mean, a bus and a crowd with this probability; ``exposure``
#: scales the brightness. 'default' is the demo's sample: a sunny road,
#: mostly cars. 'city' is another domain (what docs/finetune.md fine-tunes
#: on): a dim street of fewer cars and more people, riders and buses.
SCENE_MIXES = {
    'default': dict(cars=(2, 8), trucks=0.8, bus=0.5, pedestrians=(0, 6),
                    two_wheelers=1.2, crowd=0.2, exposure=1.0),
    'city': dict(cars=(1, 4), trucks=0.3, bus=0.8, pedestrians=(3, 10),
                 two_wheelers=2.5, crowd=0.5, exposure=0.7),
}

_CAR_COLORS = [(180, 20, 25), (20, 40, 140), (230, 230, 230), (150, 152, 158),
               (25, 25, 28), (90, 20, 30), (30, 90, 60), (200, 160, 40),
               (70, 75, 90), (120, 130, 150)]
_TRUCK_COLORS = [(235, 235, 230), (210, 120, 30), (190, 190, 185),
                 (60, 90, 150), (140, 40, 30)]
_BUS_COLORS = [(240, 200, 20), (200, 30, 30), (30, 110, 190), (40, 150, 70)]
_SHIRT_COLORS = [(200, 40, 40), (40, 60, 160), (230, 230, 220),
                 (40, 40, 40), (60, 140, 60), (220, 180, 40), (130, 60, 140),
                 (90, 90, 100)]
_PANTS_COLORS = [(30, 30, 50), (50, 50, 55), (80, 60, 40), (20, 40, 90),
                 (140, 130, 110)]
_SKIN_COLORS = [(240, 200, 170), (200, 150, 110), (140, 95, 60),
                (90, 60, 40)]
_HELMET_COLORS = [(240, 240, 240), (220, 30, 30), (30, 30, 30),
                  (250, 200, 0), (30, 90, 200)]


def sample_name(seed: int, split: str, index: int) -> str:
    """BDD100K-style image stem (``xxxxxxxx-xxxxxxxx``) for one sample."""
    digest = hashlib.sha1(f'{seed}/{split}/{index}'.encode()).hexdigest()
    return f'{digest[:8]}-{digest[8:16]}'


def _jitter(rng, color, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255))
                 for c in color)


def _pick(rng, colors):
    return colors[int(rng.integers(len(colors)))]


class _Layer:
    """One object drawn on its own transparent full-size layer."""

    def __init__(self, size):
        self.image = Image.new('RGBA', size, (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)

    def rect(self, box, color):
        x0, y0, x1, y1 = box
        self.draw.rectangle(
            [round(x0), round(y0), max(round(x0), round(x1) - 1),
             max(round(y0), round(y1) - 1)], fill=color + (255, ))

    def poly(self, points, color):
        self.draw.polygon([(round(x), round(y)) for x, y in points],
                          fill=color + (255, ))

    def ellipse(self, cx, cy, rx, ry, color):
        rx, ry = max(rx, 0.6), max(ry, 0.6)
        self.draw.ellipse([round(cx - rx), round(cy - ry), round(cx + rx),
                           round(cy + ry)], fill=color + (255, ))

    def line(self, points, color, width):
        self.draw.line([(round(x), round(y)) for x, y in points],
                       fill=color + (255, ), width=max(1, round(width)))

    def arrays(self):
        rgba = np.asarray(self.image)
        return rgba[..., :3], rgba[..., 3] > 0


# ---------------------------------------------------------------- objects --
# Every drawer takes (layer, rng, x, y_bottom, ppm): x is the horizontal
# centre, y_bottom the ground contact line, ppm the pixels per metre there.

def _draw_car(layer, rng, x, yb, ppm):
    color = _jitter(rng, _pick(rng, _CAR_COLORS))
    dark = (25, 25, 25)
    glass = _jitter(rng, (90, 110, 130), 12)
    h = 1.5 * ppm
    # Near the camera, cars on the road are seen from behind.
    if rng.random() < 0.6 or 4.3 * ppm > 0.45 * layer.image.width:
        w = 1.8 * ppm
        x0, x1 = x - w / 2, x + w / 2
        layer.rect((x0 + 0.08 * w, yb - 0.18 * h, x0 + 0.28 * w, yb), dark)
        layer.rect((x1 - 0.28 * w, yb - 0.18 * h, x1 - 0.08 * w, yb), dark)
        layer.rect((x0, yb - 0.62 * h, x1, yb - 0.12 * h), color)
        layer.poly([(x0 + 0.1 * w, yb - 0.62 * h), (x1 - 0.1 * w,
                                                   yb - 0.62 * h),
                    (x1 - 0.2 * w, yb - h), (x0 + 0.2 * w, yb - h)], color)
        layer.poly([(x0 + 0.16 * w, yb - 0.66 * h), (x1 - 0.16 * w,
                                                    yb - 0.66 * h),
                    (x1 - 0.23 * w, yb - 0.93 * h),
                    (x0 + 0.23 * w, yb - 0.93 * h)], glass)
        lamp = _jitter(rng, (200, 20, 20), 20)
        layer.rect((x0 + 0.03 * w, yb - 0.5 * h, x0 + 0.2 * w,
                    yb - 0.4 * h), lamp)
        layer.rect((x1 - 0.2 * w, yb - 0.5 * h, x1 - 0.03 * w,
                    yb - 0.4 * h), lamp)
    else:  # side view
        w = 4.3 * ppm
        x0, x1 = x - w / 2, x + w / 2
        if rng.random() < 0.5:  # facing left or right
            front, back = x0, x1
        else:
            front, back = x1, x0
        s = 1 if back > front else -1
        layer.rect((x0, yb - 0.6 * h, x1, yb - 0.12 * h), color)
        layer.poly([(front + s * 0.25 * w, yb - 0.6 * h),
                    (back - s * 0.08 * w, yb - 0.6 * h),
                    (back - s * 0.15 * w, yb - h),
                    (front + s * 0.38 * w, yb - h)], color)
        layer.poly([(front + s * 0.3 * w, yb - 0.63 * h),
                    (back - s * 0.14 * w, yb - 0.63 * h),
                    (back - s * 0.19 * w, yb - 0.93 * h),
                    (front + s * 0.4 * w, yb - 0.93 * h)], glass)
        r = 0.22 * h
        for cx in (x0 + 0.2 * w, x1 - 0.2 * w):
            layer.ellipse(cx, yb - r, r, r, dark)
            layer.ellipse(cx, yb - r, r * 0.45, r * 0.45, (150, 150, 150))


def _draw_truck(layer, rng, x, yb, ppm):
    box = _jitter(rng, _pick(rng, _TRUCK_COLORS))
    cab = _jitter(rng, _pick(rng, _CAR_COLORS))
    dark = (30, 30, 30)
    h = 3.3 * ppm
    if rng.random() < 0.6 or 8 * ppm > 0.6 * layer.image.width:
        # rear view: a tall plain box on dark axles
        w = 2.5 * ppm
        x0, x1 = x - w / 2, x + w / 2
        layer.rect((x0 + 0.05 * w, yb - 0.2 * h, x1 - 0.05 * w, yb), dark)
        layer.rect((x0, yb - h, x1, yb - 0.16 * h), box)
        layer.line([(x, yb - 0.95 * h), (x, yb - 0.2 * h)],
                   _jitter(rng, (90, 90, 90)), max(1, 0.04 * w))
    else:  # side view: cab + long cargo box
        w = 8.0 * ppm
        x0, x1 = x - w / 2, x + w / 2
        cab_left = rng.random() < 0.5
        cab_w = 0.24 * w
        cx0, cx1 = (x0, x0 + cab_w) if cab_left else (x1 - cab_w, x1)
        bx0, bx1 = (x0 + cab_w + 0.02 * w, x1) if cab_left else (
            x0, x1 - cab_w - 0.02 * w)
        layer.rect((x0 + 0.05 * w, yb - 0.3 * h, x1 - 0.05 * w,
                    yb - 0.15 * h), dark)
        layer.rect((bx0, yb - h, bx1, yb - 0.22 * h), box)
        layer.rect((cx0, yb - 0.72 * h, cx1, yb - 0.15 * h), cab)
        wx = cx0 + 0.15 * cab_w if cab_left else cx0 + 0.35 * cab_w
        layer.rect((wx, yb - 0.68 * h, wx + 0.5 * cab_w, yb - 0.48 * h),
                   (90, 110, 130))
        r = 0.13 * h
        for cx in (x0 + 0.1 * w, x0 + 0.62 * w, x1 - 0.12 * w):
            layer.ellipse(cx, yb - r, r, r, dark)


def _draw_bus(layer, rng, x, yb, ppm):
    color = _jitter(rng, _pick(rng, _BUS_COLORS))
    dark = (30, 30, 30)
    glass = _jitter(rng, (60, 80, 100), 10)
    h = 3.2 * ppm
    if rng.random() < 0.5 or 11 * ppm > 0.7 * layer.image.width:
        # rear view: big rear window
        w = 2.55 * ppm
        x0, x1 = x - w / 2, x + w / 2
        layer.rect((x0 + 0.05 * w, yb - 0.12 * h, x1 - 0.05 * w, yb), dark)
        layer.rect((x0, yb - h, x1, yb - 0.08 * h), color)
        layer.rect((x0 + 0.1 * w, yb - 0.9 * h, x1 - 0.1 * w, yb - 0.55 * h),
                   glass)
        layer.rect((x0 + 0.05 * w, yb - 0.3 * h, x0 + 0.18 * w,
                    yb - 0.24 * h), (230, 60, 40))
        layer.rect((x1 - 0.18 * w, yb - 0.3 * h, x1 - 0.05 * w,
                    yb - 0.24 * h), (230, 60, 40))
    else:  # side view: long body, a row of windows
        w = 11.0 * ppm
        x0, x1 = x - w / 2, x + w / 2
        layer.rect((x0, yb - h, x1, yb - 0.1 * h), color)
        n = max(3, int(w / (1.4 * ppm)))
        step = (w - 0.1 * w) / n
        for i in range(n):
            wx = x0 + 0.05 * w + i * step
            layer.rect((wx + 0.1 * step, yb - 0.85 * h, wx + 0.9 * step,
                        yb - 0.55 * h), glass)
        r = 0.15 * h
        for cx in (x0 + 0.15 * w, x1 - 0.18 * w):
            layer.ellipse(cx, yb - r, r, r, dark)


def _draw_person(layer, rng, x, yb, ppm, seated=False):
    """A standing pedestrian, or a rider (``seated``) whose hips are at
    ``yb`` - 0.45 m and who wears a helmet."""
    skin = _pick(rng, _SKIN_COLORS)
    shirt = _jitter(rng, _pick(rng, _SHIRT_COLORS))
    pants = _jitter(rng, _pick(rng, _PANTS_COLORS))
    h = 1.75 * ppm
    w = 0.45 * ppm
    limb = max(1.5, 0.13 * ppm)
    head_r = max(1.0, 0.12 * ppm)
    if seated:
        hip_y = yb - 0.45 * ppm
        lean = 0.15 * ppm
        top = hip_y - 0.62 * h + 0.15 * ppm
        layer.line([(x, hip_y), (x + 0.35 * ppm, hip_y + 0.05 * ppm),
                    (x + 0.3 * ppm, yb - 0.1 * ppm)], pants, limb)
        layer.poly([(x - w / 2, hip_y), (x + w / 2, hip_y),
                    (x + w / 2 + lean, top + 2 * head_r),
                    (x - w / 2 + lean, top + 2 * head_r)], shirt)
        layer.line([(x + lean, top + 2.6 * head_r),
                    (x + 0.55 * ppm, hip_y - 0.25 * ppm)], shirt, limb)
        layer.ellipse(x + lean, top + head_r, head_r, head_r, skin)
        layer.ellipse(x + lean, top + 0.8 * head_r, head_r * 1.15,
                      head_r * 0.85, _pick(rng, _HELMET_COLORS))
    else:
        step = rng.uniform(0, 0.15) * ppm
        hip_y = yb - 0.48 * h
        layer.line([(x - 0.08 * ppm, hip_y), (x - 0.08 * ppm - step, yb)],
                   pants, limb)
        layer.line([(x + 0.08 * ppm, hip_y), (x + 0.08 * ppm + step, yb)],
                   pants, limb)
        layer.rect((x - w / 2, yb - 0.82 * h, x + w / 2, hip_y + 0.03 * h),
                   shirt)
        layer.line([(x - w / 2, yb - 0.8 * h),
                    (x - w / 2 - 0.5 * step, yb - 0.5 * h)], shirt, limb)
        layer.line([(x + w / 2, yb - 0.8 * h),
                    (x + w / 2 + 0.5 * step, yb - 0.5 * h)], shirt, limb)
        layer.ellipse(x, yb - h + head_r, head_r, head_r * 1.1, skin)
        layer.ellipse(x, yb - h + 0.6 * head_r, head_r, head_r * 0.6,
                      _jitter(rng, (40, 30, 20), 20))


def _draw_two_wheeler(layer, rng, x, yb, ppm, motor: bool):
    """Side view. A motorcycle is a solid shape (fat dark tyres, engine and
    fairing between the wheels); a bicycle is two light disc wheels (solid,
    so they are not 1-pixel rings at this resolution) and a thin frame."""
    tyre = (25, 25, 25)
    if motor:
        length, r = 2.1 * ppm, 0.31 * ppm
        xa, xb = x - length / 2 + r, x + length / 2 - r
        body = _jitter(rng, _pick(rng, _CAR_COLORS))
        for cx in (xa, xb):
            layer.ellipse(cx, yb - r, r, r, tyre)
            layer.ellipse(cx, yb - r, r * 0.35, r * 0.35, (110, 110, 115))
        layer.rect((xa, yb - 1.5 * r, xb, yb - 0.6 * r), (55, 55, 60))
        layer.poly([(xa - 0.3 * r, yb - 1.3 * r), (xa + 0.4 * r, yb - 2.0 * r),
                    (xb - 0.2 * r, yb - 2.4 * r), (xb + 0.3 * r,
                                                   yb - 1.6 * r),
                    (xb - 0.4 * r, yb - 1.1 * r)], body)
        layer.ellipse(xb + 0.25 * r, yb - 1.9 * r, 0.25 * r, 0.25 * r,
                      (250, 240, 180))
    else:
        length, r = 1.7 * ppm, 0.34 * ppm
        xa, xb = x - length / 2 + r, x + length / 2 - r
        frame = _jitter(rng, _pick(rng, _SHIRT_COLORS))
        for cx in (xa, xb):
            layer.ellipse(cx, yb - r, r, r, tyre)
            layer.ellipse(cx, yb - r, r * 0.75, r * 0.75, (185, 185, 190))
        width = max(1.5, 0.07 * ppm)
        top = yb - 2.1 * r
        layer.line([(xa, yb - r), (x, yb - r), (x - 0.2 * r, top),
                    (xa, yb - r)], frame, width)
        layer.line([(x - 0.2 * r, top), (xb - 0.3 * r, top), (xb, yb - r)],
                   frame, width)
        layer.line([(x, yb - r), (xb - 0.3 * r, top)], frame, width)
        layer.line([(xb - 0.3 * r, top), (xb - 0.4 * r, top - 0.4 * r)],
                   (40, 40, 40), width)


# ------------------------------------------------------------------ scene --

def _draw_background(rng, width, height, horizon, vanish_x):
    img = Image.new('RGB', (width, height))
    arr = np.zeros((height, width, 3), np.float32)
    top = np.array(_jitter(rng, (95, 140, 210), 25), np.float32)
    low = np.array(_jitter(rng, (200, 215, 230), 15), np.float32)
    t = np.linspace(0, 1, max(horizon, 1))[:, None, None]
    arr[:horizon] = top * (1 - t) + low * t
    ground = np.array(_jitter(rng, (95, 100, 85), 15), np.float32)
    arr[horizon:] = ground
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    # Buildings and trees along the horizon.
    x = -rng.integers(0, 30)
    while x < width:
        bw = int(rng.integers(14, 60))
        bh = int(rng.integers(8, max(10, int(horizon * 0.9))))
        if rng.random() < 0.25:  # a tree
            cr = int(rng.integers(5, 14))
            draw.rectangle([x + bw // 2 - 1, horizon - cr, x + bw // 2 + 1,
                            horizon], fill=(70, 50, 30))
            draw.ellipse([x + bw // 2 - cr, horizon - 3 * cr, x + bw // 2 + cr,
                          horizon - cr + 2],
                         fill=_jitter(rng, (50, 110, 50), 20))
        else:
            color = _jitter(rng, _pick(rng, [(150, 140, 130), (120, 110, 105),
                                             (170, 160, 140), (100, 105, 115),
                                             (160, 120, 100)]), 15)
            draw.rectangle([x, horizon - bh, x + bw, horizon], fill=color)
            win = tuple(int(c * 0.55) for c in color)
            for wy in range(horizon - bh + 3, horizon - 4, 6):
                for wx in range(x + 3, x + bw - 3, 6):
                    draw.rectangle([wx, wy, wx + 2, wy + 2], fill=win)
        x += bw + int(rng.integers(-5, 6))
    # Road, sidewalks and lane marks in perspective.
    road = _jitter(rng, (85, 85, 90), 12)
    walk = _jitter(rng, (165, 160, 150), 12)
    half_bottom = width * rng.uniform(0.7, 0.95)
    walk_bottom = half_bottom + width * 0.35
    vx, vy = vanish_x, horizon
    draw.polygon([(vx - 2, vy), (vx + 2, vy), (vx + walk_bottom, height),
                  (vx - walk_bottom, height)], fill=walk)
    draw.polygon([(vx - 1, vy), (vx + 1, vy), (vx + half_bottom, height),
                  (vx - half_bottom, height)], fill=road)
    mark = _jitter(rng, (235, 235, 225), 10)
    for frac in (-0.33, 0.33):
        xb_ = vx + frac * half_bottom * 2 * 0.75
        for k in range(12):  # dashes, longer near the camera
            t0, t1 = (k / 12) ** 1.6, ((k + 0.5) / 12) ** 1.6
            p0 = (vx + (xb_ - vx) * t0, vy + (height - vy) * t0)
            p1 = (vx + (xb_ - vx) * t1, vy + (height - vy) * t1)
            draw.line([p0, p1], fill=mark, width=max(1, int(1 + 3 * t1)))
    edge = (230, 200, 60)
    draw.line([(vx - 1, vy), (vx - half_bottom * 0.97, height)], fill=edge,
              width=2)
    draw.line([(vx + 1, vy), (vx + half_bottom * 0.97, height)], fill=edge,
              width=2)
    return img, half_bottom, walk_bottom


def _plan_objects(rng, width, height, horizon, vanish_x, half_road,
                  half_walk, mix=SCENE_MIXES['default']):
    """Random objects as (y_bottom, kind, x, extra) in drawing order
    (``mix``: one of :data:`SCENE_MIXES`)."""
    span = height - horizon
    objs = []

    def ground_y(min_frac=0.06, max_frac=1.04):
        # Denser towards the horizon: small far objects outnumber near ones.
        u = rng.uniform(min_frac ** 0.5, max_frac ** 0.5)
        return horizon + span * u * u

    def road_x(yb, lane_frac=0.85):
        t = (yb - horizon) / span
        return vanish_x + rng.uniform(-lane_frac, lane_frac) * half_road * t

    def walk_x(yb):
        t = (yb - horizon) / span
        side = 1 if rng.random() < 0.5 else -1
        off = rng.uniform(half_road * 1.0, half_walk * 0.95) * t
        return vanish_x + side * off

    for _ in range(int(rng.integers(*mix['cars']))):
        yb = ground_y()
        objs.append((yb, 'car', road_x(yb)))
    for _ in range(int(rng.poisson(mix['trucks']))):
        yb = ground_y()
        objs.append((yb, 'truck', road_x(yb)))
    if rng.random() < mix['bus']:
        yb = ground_y()
        objs.append((yb, 'bus', road_x(yb)))
    for _ in range(int(rng.integers(*mix['pedestrians']))):
        yb = ground_y(0.1)
        objs.append((yb, 'pedestrian', walk_x(yb)))
    for _ in range(int(rng.poisson(mix['two_wheelers']))):
        yb = ground_y(0.1)
        kind = 'motorcycle' if rng.random() < 0.5 else 'bicycle'
        rode = rng.random() < 0.75
        x = road_x(yb, 1.0) if rode else walk_x(yb)
        objs.append((yb, kind + ('_rider' if rode else ''), x))
    if rng.random() < mix['crowd']:
        yb = ground_y(0.08, 0.3)
        objs.append((yb, 'crowd', walk_x(yb)))
    objs.sort(key=lambda o: o[0])
    return objs


def render_scene(rng: np.random.Generator,
                 size: Tuple[int, int] = DEFAULT_SIZE,
                 scene_mix: str = 'default'
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one scene (``scene_mix``: a name of :data:`SCENE_MIXES`).

    Returns the image, (H, W, 3) uint8 RGB, and its label, (H, W, 4) uint8
    in the BDD100K bitmask format: R = category id, G = attribute bits,
    B << 8 | A = instance id (1..N within the image, 0 = background).
    """
    mix = SCENE_MIXES[scene_mix]
    width, height = size
    horizon = int(height * rng.uniform(0.36, 0.46))
    vanish_x = width / 2 + rng.uniform(-0.12, 0.12) * width
    img, half_road, half_walk = _draw_background(rng, width, height, horizon,
                                                 vanish_x)
    scene = np.array(img)
    ids = np.zeros((height, width), np.int32)
    # Flat ground seen from a camera ``cam_height`` metres up: an object
    # standing on image row y is (y - horizon) / cam_height pixels per metre.
    cam_height = rng.uniform(3.0, 3.6)
    instances: List[Dict] = []

    def paint(category, attrs, drawer):
        layer = _Layer((width, height))
        drawer(layer)
        rgb, mask = layer.arrays()
        if mask.sum() == 0:
            return
        scene[mask] = rgb[mask]
        ids[mask] = len(instances) + 1
        instances.append(dict(category=category, attrs=attrs,
                              drawn=int(mask.sum())))

    for yb, kind, x in _plan_objects(rng, width, height, horizon, vanish_x,
                                     half_road, half_walk, mix):
        ppm = (yb - horizon) / cam_height
        if kind == 'car':
            paint(CAR, 0, lambda L: _draw_car(L, rng, x, yb, ppm))
        elif kind == 'truck':
            paint(TRUCK, 0, lambda L: _draw_truck(L, rng, x, yb, ppm))
        elif kind == 'bus':
            paint(BUS, 0, lambda L: _draw_bus(L, rng, x, yb, ppm))
        elif kind == 'pedestrian':
            paint(PEDESTRIAN, 0, lambda L: _draw_person(L, rng, x, yb, ppm))
        elif kind == 'crowd':
            # Several overlapping far pedestrians: one region, crowd+ignore.
            n = int(rng.integers(3, 7))
            xs = x + ppm * np.cumsum(rng.uniform(0.3, 0.6, n))
            ys = yb + ppm * rng.uniform(-0.3, 0.3, n)

            def crowd(L, xs=xs, ys=ys):
                for px, py in zip(xs, ys):
                    _draw_person(L, rng, px, py, ppm)
            paint(PEDESTRIAN, CROWD | IGNORE, crowd)
        else:
            motor = kind.startswith('motorcycle')
            paint(MOTORCYCLE if motor else BICYCLE, 0,
                  lambda L: _draw_two_wheeler(L, rng, x, yb, ppm, motor))
            if kind.endswith('_rider'):
                paint(RIDER, 0, lambda L: _draw_person(
                    L, rng, x - 0.1 * ppm, yb, ppm, seated=True))

    # Sensor look: slight blur, exposure change, noise.
    img = Image.fromarray(scene).filter(ImageFilter.GaussianBlur(0.5))
    out = np.asarray(img, np.float32) * (rng.uniform(0.85, 1.1)
                                         * mix['exposure'])
    out += rng.normal(0, 4.0, out.shape)
    image = np.clip(out, 0, 255).astype(np.uint8)

    label = np.zeros((height, width, 4), np.uint8)
    next_id = 1
    for k, inst in enumerate(instances, start=1):
        mask = ids == k
        visible = int(mask.sum())
        if visible < 6:  # hidden or a few pixels: left unlabeled
            continue
        attrs = inst['attrs']
        if visible < 0.95 * inst['drawn']:
            attrs |= OCCLUDED
        ys_, xs_ = np.nonzero(mask)
        if (xs_.min() == 0 or ys_.min() == 0 or xs_.max() == width - 1
                or ys_.max() == height - 1):
            attrs |= TRUNCATED
        if visible < 16:  # too small to label reliably
            attrs |= IGNORE
        label[mask] = (inst['category'], attrs, next_id >> 8, next_id & 255)
        next_id += 1
    return image, label


# ------------------------------------------------------------------ files --

def _to_coco(mask_dir: str, out_json: str, nproc: int) -> None:
    """COCO json of a bitmask folder by the official ``bdd100k`` converter,
    with sorted ids and real image sizes (see :mod:`.labels`)."""
    from bdd100k_ins_seg.formats.labels import bitmasks_to_coco, write_json
    write_json(bitmasks_to_coco(mask_dir, nproc), out_json)


def _to_rle(mask_dir: str, out_json: str) -> None:
    """The GT bitmasks as the download's RLE json (Scalabel frames; see
    :mod:`.rle`)."""
    from bdd100k_ins_seg.formats.rle import gt_frames, write_rle_file
    write_rle_file(out_json, gt_frames(mask_dir))


def _write_scene(task) -> int:
    """Render one scene, write its image (and its bitmask unless
    ``mask_dir`` is None); return its number of instances."""
    seed, split, index, size, scene_mix, img_dir, mask_dir = task
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    image, label = render_scene(rng, size, scene_mix)
    name = sample_name(seed, split, index)
    Image.fromarray(image).save(osp.join(img_dir, name + '.jpg'),
                                quality=JPEG_QUALITY)
    if mask_dir is None:
        return 0
    Image.fromarray(label, 'RGBA').save(osp.join(mask_dir, name + '.png'))
    inst = (label[..., 2].astype(int) << 8) | label[..., 3]
    return int(inst.max())


def _info(seed, counts, size, scene_mix):
    return dict(generator_version=GENERATOR_VERSION, seed=seed,
                counts=dict(counts), size=list(size), scene_mix=scene_mix)


def is_complete(out_dir: str, seed: Optional[int] = None,
                counts: Optional[Dict[str, int]] = None,
                size: Tuple[int, int] = DEFAULT_SIZE,
                scene_mix: str = 'default') -> bool:
    """True if ``out_dir`` holds a finished sample made with these settings
    (``seed``/``counts`` None: any)."""
    path = osp.join(out_dir, INFO_FILE)
    if not osp.isfile(path):
        return False
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    if info.get('generator_version') != GENERATOR_VERSION:
        return False
    if seed is not None and info.get('seed') != seed:
        return False
    if counts is not None and info.get('counts') != dict(counts):
        return False
    if info.get('size') != list(size):
        return False
    # samples written before there were mixes hold the default one
    if info.get('scene_mix', 'default') != scene_mix:
        return False
    for split, n in info['counts'].items():
        img_dir = osp.join(out_dir, 'images', '10k', split)
        if not osp.isdir(img_dir) or len(os.listdir(img_dir)) != n:
            return False
        if split != 'test':
            if not osp.isfile(osp.join(out_dir, 'jsons',
                                       f'ins_seg_{split}_cocofmt.json')):
                return False
    return True


def generate_sample_dataset(out_dir: str,
                            seed: int = 0,
                            counts: Optional[Dict[str, int]] = None,
                            size: Tuple[int, int] = DEFAULT_SIZE,
                            nproc: int = 2,
                            progress: bool = True,
                            scene_mix: str = 'default') -> Dict[str, int]:
    """Write the sample dataset to ``out_dir`` (which must not exist or be
    empty); return the number of labeled instances per split.

    ``counts``: images per split, e.g. ``dict(train=300, val=60, test=20)``.
    ``size``: (width, height) in pixels. ``scene_mix``: what the scenes
    hold, a name of :data:`SCENE_MIXES`. ``nproc``: processes that draw
    the scenes and convert the labels to COCO. Files are first written to a
    sibling ``<out_dir>.partial`` folder, moved into place when complete.
    """
    from bdd100k_ins_seg.parallel import map_with_progress

    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = set(counts) - set(SPLIT_IDS)
    if unknown:
        raise ValueError(f'unknown split(s) {sorted(unknown)}; '
                         f'expected {sorted(SPLIT_IDS)}')
    if any(n < 0 for n in counts.values()):
        raise ValueError(f'image counts must be >= 0, got {counts}')
    if scene_mix not in SCENE_MIXES:
        raise ValueError(f'unknown scene mix {scene_mix!r}; expected one of '
                         f'{", ".join(SCENE_MIXES)}')
    out_dir = osp.abspath(out_dir.rstrip('/'))
    if osp.exists(out_dir) and (not osp.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f'{out_dir} exists and is not empty')
    tmp = out_dir + '.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    num_instances = {}
    try:
        for split, n in counts.items():
            img_dir = osp.join(tmp, 'images', '10k', split)
            os.makedirs(img_dir)
            mask_dir = osp.join(tmp, 'labels', 'ins_seg', 'bitmasks', split)
            if split != 'test':
                os.makedirs(mask_dir)
            # Each scene has its own generator: the same bytes in any
            # number of processes.
            tasks = [(seed, split, i, size, scene_mix, img_dir,
                      None if split == 'test' else mask_dir)
                     for i in range(n)]
            total = sum(map_with_progress(_write_scene, tasks, nproc,
                                          f'{split} scenes',
                                          progress=progress))
            if split != 'test':
                _to_rle(mask_dir, osp.join(tmp, 'labels', 'ins_seg', 'rles',
                                           f'ins_seg_{split}.json'))
                os.makedirs(osp.join(tmp, 'jsons'), exist_ok=True)
                _to_coco(mask_dir,
                         osp.join(tmp, 'jsons',
                                  f'ins_seg_{split}_cocofmt.json'), nproc)
                num_instances[split] = total
        with open(osp.join(tmp, INFO_FILE), 'w') as f:
            json.dump(_info(seed, counts, size, scene_mix), f, indent=2)
        if osp.isdir(out_dir):
            os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return num_instances
