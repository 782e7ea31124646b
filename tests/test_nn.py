"""Network blocks: shapes, conditioning, crops, keypoints, EMA schedule, GMM fitting."""

from __future__ import annotations

import pytest
import torch

from robolearn.nn.ema import EMA
from robolearn.nn.gmm import GMMHead
from robolearn.nn.mlp import MLP
from robolearn.nn.unet1d import ConditionalUnet1D
from robolearn.nn.vision import ImageEncoder, SpatialSoftmax, crop_images


def test_mlp_shapes_layer_norm_and_bad_activation():
    mlp = MLP(5, 3, hidden_dims=(8, 8), activation="mish", layer_norm=True)
    assert mlp(torch.randn(4, 7, 5)).shape == (4, 7, 3)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in mlp.modules()) == 2
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(5, 3, activation="swish")


def test_unet_shapes_and_film_conditioning():
    torch.manual_seed(0)
    unet = ConditionalUnet1D(input_dim=3, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(16, 32, 64))
    x = torch.randn(2, 8, 3)
    cond = torch.randn(2, 6)
    out = unet(x, torch.tensor([0, 50]), cond)
    assert out.shape == x.shape
    # Both the condition and the diffusion step change the output.
    assert not torch.allclose(out, unet(x, torch.tensor([0, 50]), cond + 1.0))
    assert not torch.allclose(out, unet(x, 7, cond))
    out.sum().backward()
    assert all(p.grad is not None for p in unet.parameters())
    with pytest.raises(ValueError, match="multiple of 4"):
        unet(torch.randn(2, 6, 3), 0, cond)
    with pytest.raises(ValueError, match="global_cond must have shape"):
        unet(x, 0, torch.randn(2, 5))


def test_crops_random_in_training_and_centered_in_eval():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    center = crop_images(images, (4, 4), random=False)
    assert torch.equal(center, images[:, :, 1:5, 1:5])
    torch.manual_seed(0)
    crops = [crop_images(images, (4, 4), random=True) for _ in range(20)]
    assert all(c.shape == (2, 1, 4, 4) for c in crops)
    # Every random crop is a contiguous window of its own image.
    for c in crops:
        for n in range(2):
            top, left = divmod(int(c[n, 0, 0, 0].item()) - 36 * n, 6)
            assert torch.equal(c[n], images[n, :, top : top + 4, left : left + 4])
    assert len({tuple(c[0, 0, 0, :1].tolist()) for c in crops}) > 1
    with pytest.raises(ValueError, match="larger than the image"):
        crop_images(images, (7, 4), random=False)


def test_spatial_softmax_finds_a_bright_spot():
    softmax = SpatialSoftmax(in_channels=1, num_keypoints=1)
    with torch.no_grad():
        softmax.keypoint_conv.weight.fill_(50.0)
        softmax.keypoint_conv.bias.zero_()
    features = torch.zeros(1, 1, 5, 9)
    features[0, 0, 4, 0] = 1.0  # bottom-left corner
    keypoint = softmax(features)[0, 0]
    assert keypoint[0].item() == pytest.approx(-1.0, abs=1e-3)  # x
    assert keypoint[1].item() == pytest.approx(1.0, abs=1e-3)  # y


def test_image_encoder_uint8_input_and_eval_determinism():
    encoder = ImageEncoder((20, 24, 3), crop_shape=(16, 16), channels=(8, 16), num_keypoints=4, feature_dim=12)
    images = torch.randint(0, 256, (5, 20, 24, 3), dtype=torch.uint8)
    features = encoder(images)
    assert features.shape == (5, 12)
    features.sum().backward()
    assert encoder.stem[0].weight.grad is not None
    encoder.eval()
    assert torch.equal(encoder(images), encoder(images))
    with pytest.raises(ValueError, match="expected images of shape"):
        encoder(torch.zeros(5, 24, 20, 3, dtype=torch.uint8))


def test_ema_schedule_and_averaging():
    model = torch.nn.Linear(2, 2)
    model.register_buffer("stat", torch.zeros(2))
    ema = EMA(model, power=0.75, max_decay=0.999)
    assert ema.decay(0) == 0.0 and ema.decay(1) == 0.0
    decays = [ema.decay(n) for n in (2, 10, 100, 1000, 10**6)]
    assert decays == sorted(decays) and decays[-1] == 0.999
    assert ema.decay(10) == pytest.approx(1 - (1 + 9) ** -0.75)
    # The first update copies; later ones mix old and new weights with the scheduled decay.
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.equal(ema.model.weight, model.weight)
    ema.update(model)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.stat.fill_(5.0)
    decay = ema.decay()
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((2, 2), decay * 1.0 + (1 - decay) * 3.0))
    assert torch.equal(ema.model.stat, model.stat)
    assert not any(p.requires_grad for p in ema.model.parameters())
    restored = EMA(model)
    restored.load_state_dict(ema.state_dict(), ema.num_updates)
    assert torch.equal(restored.model.weight, ema.model.weight) and restored.num_updates == 3


def test_gmm_head_keeps_two_modes_apart():
    torch.manual_seed(0)
    head = GMMHead(in_dim=1, out_dim=2, num_modes=2, hidden_dims=(32,))
    features = torch.ones(64, 1)
    targets = torch.tensor([[0.8, 0.8], [-0.8, -0.8]]).repeat(32, 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = -head.log_prob(features, targets).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    means, _, logits = head.parameters_of(features[:1])
    found = sorted(means[0, :, 0].tolist())
    assert found == pytest.approx([-0.8, 0.8], abs=0.05)
    assert logits.softmax(-1)[0].min() > 0.3
    # The mode and low-noise eval samples lie on one of the two modes, never in between.
    assert head.mode(features[:1]).abs().min() > 0.7
    samples = head.sample(features, generator=torch.Generator().manual_seed(0))
    assert (samples.abs() > 0.7).all()
