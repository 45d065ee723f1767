"""Architecture constants of the two models, as data.

Each model is described by one frozen dataclass: the feature maps it predicts from,
their channels, and the default-box layout on each map. Sizes (``scales``, ``steps``)
are in pixels of the ``fig_size`` x ``fig_size`` input.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class SSDSpec:
    name: str
    fig_size: int
    feature_maps: tuple[int, ...]           # side of each square feature map
    steps: tuple[int, ...]                  # pixels between neighbouring cells
    scales: tuple[int, ...]                 # box side per level, plus one extra for s'_k
    aspect_ratios: tuple[tuple[int, ...], ...]
    out_channels: tuple[int, ...]           # channels of each feature map

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        # two square boxes (s_k and sqrt(s_k * s_k+1)) plus a pair per aspect ratio
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_boxes(self) -> int:
        return sum(n * f * f for n, f in zip(self.boxes_per_location, self.feature_maps))


SSD300 = SSDSpec(
    name="ssd",
    fig_size=300,
    feature_maps=(38, 19, 10, 5, 3, 1),
    steps=(8, 16, 32, 64, 100, 300),
    scales=(21, 45, 99, 153, 207, 261, 315),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    out_channels=(1024, 512, 512, 256, 256, 256),
)

SSDLITE = SSDSpec(
    name="ssdlite",
    fig_size=300,
    feature_maps=(19, 10, 5, 3, 2, 1),
    steps=(16, 32, 64, 100, 150, 300),
    scales=(60, 105, 150, 195, 240, 285, 330),
    aspect_ratios=((2, 3),) * 6,
    out_channels=(576, 1280, 512, 256, 256, 64),
)

MODEL_NAMES = ("ssd", "ssdlite")


def get_spec(name: str) -> SSDSpec:
    """The spec of model ``name`` ("ssd" or "ssdlite")."""
    specs = {"ssd": SSD300, "ssdlite": SSDLITE}
    if name not in specs:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    return specs[name]
