"""MultiCropTransform's uint8 fast path equals the plain torchvision v2 recipe exactly (same random draws,
same kernels), for PIL and tensor inputs."""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from open_tips.data.builtin import BuiltinShapes
from open_tips.data.crops import MultiCropTransform


def plain_v2(image, global_size, local_size, num_local, global_scale, local_scale):
    """The recipe written plainly: v2 transforms on the uint8 image, floats at the end."""

    def compose(size, scale):
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=scale, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    first, other = compose(global_size, global_scale), compose(local_size, local_scale)
    return first(image), [other(image) for _ in range(num_local)]


def test_uint8_crops_equal_plain_v2():
    pil = BuiltinShapes(1, 112)[0]["image"].resize((150, 96))  # not square: exercises the aspect draws
    tensor = TF.pil_to_tensor(pil)
    transform = MultiCropTransform(56, 28, 4, global_scale=(0.32, 1.0), local_scale=(0.05, 0.32))
    for image in (pil, tensor):
        for seed in range(5):
            torch.manual_seed(seed)
            got_global, got_local = transform(image)
            torch.manual_seed(seed)
            want_global, want_local = plain_v2(tensor, 56, 28, 4, (0.32, 1.0), (0.05, 0.32))
            assert torch.equal(got_global, want_global)
            assert len(got_local) == 4
            for got, want in zip(got_local, want_local):
                assert torch.equal(got, want)
            assert (
                got_global.dtype == torch.float32
                and 0.0 <= float(got_global.min()) <= float(got_global.max()) <= 1.0
            )


def test_float_and_grey_tensor_inputs():
    transform = MultiCropTransform(28, 14, 1)
    grey = torch.rand(1, 40, 50)
    global_crop, (local,) = transform(grey)
    assert global_crop.shape == (3, 28, 28) and local.shape == (3, 14, 14)
    assert 0.0 <= float(global_crop.min()) and float(global_crop.max()) <= 1.0
