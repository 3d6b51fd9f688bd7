"""Per-sample pipelines: presets instantiate, keep shape/dtype/range, reproduce under a seed; every step works."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from lit_tricks.augment import STEPS, Pipeline, RandomJPEG, make_step
from tests.augment.presets import PRESETS, load_preset


def test_all_presets_present() -> None:
    assert {"none", "digits", "cifar_basic", "cifar_strong", "mixup", "cutmix"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_preset_shape_dtype_range_seeded(name: str, shape: tuple[int, int, int]) -> None:
    pipe, _ = load_preset(name)
    if name == "none":
        assert pipe is None
        return
    assert isinstance(pipe, Pipeline)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (1, 1, 2, 3):
        torch.manual_seed(seed)
        outs.append(pipe(x))
    for out in outs:
        assert out.shape == x.shape and out.dtype == x.dtype and type(out) is torch.Tensor
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert torch.equal(outs[0], outs[1])  # same seed, same augmentation
    assert not (torch.equal(outs[0], outs[2]) and torch.equal(outs[0], outs[3]))  # other seeds differ
    assert pipe(x.double()).dtype == torch.float64


STEP_ARGS = {
    "random_crop": {"padding": 2},
    "random_resized_crop": {"size": 16, "scale": (0.5, 1.0)},
    "rotation": {"degrees": 30},
    "affine": {"degrees": 10, "translate": (0.1, 0.1), "shear": 10},
    "color_jitter": {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.1},
    "grayscale": {"p": 1.0},
    "gaussian_blur": {"kernel_size": 3, "sigma": 1.0},
    "random_erasing": {"p": 1.0},
    "hflip": {"p": 1.0},
    "vflip": {"p": 1.0},
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_step_keeps_shape_and_changes_the_image(name: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 16, 16)
    out = Pipeline([{name: STEP_ARGS.get(name, {})}])(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert not torch.equal(out, x)


def test_step_forms_and_errors() -> None:
    assert isinstance(make_step("hflip"), v2.RandomHorizontalFlip)
    assert isinstance(make_step({"name": "rotation", "degrees": 5}), v2.RandomRotation)
    built = v2.RandomVerticalFlip(p=1.0)  # what Hydra builds from a _target_ step
    assert make_step(built) is built
    with pytest.raises(ValueError, match=r"unknown name 'flip'; valid: \[.*'hflip'"):
        make_step("flip")
    with pytest.raises(TypeError, match="augmentation step 'rotation': bad arguments"):
        make_step({"rotation": {"angle": 3}})
    with pytest.raises(TypeError, match=r"expected one float image tensor \(C, H, W\)"):
        Pipeline(["hflip"])(torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="steps: expected a list"):
        Pipeline("hflip")  # type: ignore[arg-type]


def test_jpeg_uint8_round_trip_and_noise_clip() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 16, 16)
    out = RandomJPEG(quality=20)(x)
    assert out.dtype == torch.float32 and not torch.equal(out, x)
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)  # passed through uint8
    noisy = Pipeline([{"gaussian_noise": {"sigma": 0.5}}])(x)
    assert 0.0 <= float(noisy.min()) and float(noisy.max()) <= 1.0  # clip=True on raw [0, 1] images
    assert float(Pipeline([{"gaussian_noise": {"sigma": 0.5, "clip": False}}])(x).max()) > 1.0
