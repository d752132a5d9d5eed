"""The light random affine (``data.augment=true``): its geometry, its ranges and its seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.task.transforms import LightAffine


def _square(size: int = 28) -> torch.Tensor:
    img = torch.zeros(1, size, size)
    img[0, 4:12, 16:24] = 1.0
    return img


def test_zero_ranges_give_back_the_image_exactly():
    # Prepare
    affine = LightAffine(2, degrees=0.0, shift=0.0, scale=0.0)
    affine.set_random_state(0)
    img = torch.rand(1, 28, 28)

    # Execute
    out = affine(img)

    # Assert: the identity warp samples every pixel at its own centre
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)


def test_a_quarter_turn_matches_rot90():
    # Prepare: a 90-degree rotation (out of the augmentation's range, to check the axes unambiguously)
    affine = LightAffine(2, degrees=0.0, shift=0.0, scale=0.0)
    affine.theta = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    img = torch.rand(1, 28, 28)

    # Execute
    affine.randomize = lambda data=None: None  # keep the fixed matrix
    out = affine(img)

    # Assert: a quarter turn in one direction or the other, pixel for pixel
    turns = [torch.rot90(img, k, dims=(1, 2)) for k in (1, -1)]
    assert min(float((out - t).abs().max()) for t in turns) < 1e-5


def test_draws_stay_in_range_and_cover_it():
    # Prepare
    affine = LightAffine(2)
    affine.set_random_state(3)

    # Execute
    mats = [affine.matrix().double().numpy() for _ in range(400)]

    # Assert: linear part = rotation x per-axis scale; shift within 5 % of the side (0.1 normalised)
    angles = np.array([math.atan2(m[1, 0], m[0, 0]) for m in mats])
    scales = np.array([np.linalg.norm(m[:, :2], axis=0) for m in mats])
    shifts = np.array([m[:, 2] for m in mats])
    assert np.abs(angles).max() <= math.radians(10) + 1e-9 and np.abs(angles).max() > math.radians(9)
    assert (angles > 0).any() and (angles < 0).any()
    assert scales.min() >= 0.95 - 1e-9 and scales.max() <= 1.05 + 1e-9 and np.ptp(scales) > 0.08
    assert np.abs(shifts).max() <= 0.1 + 1e-9 and np.abs(shifts).max() > 0.09


def test_the_same_seed_gives_the_same_draws_and_another_seed_others():
    # Prepare
    a, b, c = LightAffine(2), LightAffine(2), LightAffine(2)
    a.set_random_state(7)
    b.set_random_state(7)
    c.set_random_state(8)
    img = _square()

    # Execute
    out_a, out_b, out_c = a(img), b(img), c(img)

    # Assert
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, out_c)
    assert float((out_a - img).abs().max()) > 0.3, "a random affine moves a structured image"


@pytest.mark.parametrize("dims", [2, 3])
def test_volumes_and_images_keep_their_shape_and_mass(dims):
    # Prepare: a blob in the middle, so that a small move keeps it inside the frame
    size = 16
    img = torch.zeros(1, *(size,) * dims)
    img[(0, *(slice(5, 11),) * dims)] = 1.0
    affine = LightAffine(dims)
    affine.set_random_state(0)

    # Execute
    out = affine(img)

    # Assert: same shape; mass changes by at most the scaling's area/volume change and interpolation
    assert out.shape == img.shape
    assert out.sum() == pytest.approx(float(img.sum()), rel=0.25)
    assert not torch.equal(out, img)


def test_other_dimensions_are_refused():
    with pytest.raises(ValueError, match="spatial_dims=1"):
        LightAffine(1)
