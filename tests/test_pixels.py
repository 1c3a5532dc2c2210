"""Pixel RLPD (ALGORITHMS.md section 1.10) on synthetic batches: the random shift, who trains
the encoder, the actor's copy of the critic's conv weights, the Z-member target critic with its
encoder, the frozen pretrained encoder and the refusals (OBAC/OEMA with cameras, bad files,
bad batches), and a one-step task only the image shows, learned with images and not with
blank ones. Small images and encoders: about 10 s in all on one core.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from o2o_robot.agents.base import build_agent
from o2o_robot.agents.encoders import (PAD, ConvTrunk, FrozenTrunk, _shift_copies, _shift_gather,
                                       observation_batch, random_shift)
from o2o_robot.agents.rlpd import BATCH_KEYS, RLPD, critic_loss, actor_loss
from o2o_robot.config import O2OConfig, RLPDConfig
from o2o_robot.spaces import CameraSpec

torch.set_num_threads(1)
OBS, ACT, N = 3, 2, 8
CAM = CameraSpec("front", 16, 16, 3, 2)
CFG = dict(hidden_dims=[16, 16], encoder_features=[4, 8], latent_dim=6, critic_subset_size=1,
           init_temperature=0.1, backup_entropy=False)


def make_agent(seed: int = 0, cameras=(CAM,), **overrides) -> RLPD:
    return RLPD(OBS, ACT, RLPDConfig(**{**CFG, **overrides}), batch_size=N, seed=seed,
                cameras=cameras)


def make_batch(rows: int = 2 * N, seed: int = 0, cameras=(CAM,)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {"obs": rng.standard_normal((rows, OBS), np.float32),
             "next_obs": rng.standard_normal((rows, OBS), np.float32),
             "action": rng.uniform(-1, 1, (rows, ACT)).astype(np.float32),
             "reward": rng.standard_normal(rows).astype(np.float32),
             "mask": np.ones(rows, np.float32)}
    for cam in cameras:
        for prefix in ("pixels/", "next_pixels/"):
            batch[prefix + cam.name] = rng.integers(0, 256, (rows, *cam.shape), dtype=np.uint8)
    return batch


def weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------ augmentation
def coordinate_images(batch: int, h: int = 12, w: int = 10) -> torch.Tensor:
    """uint8 [B, h, w, 2]: channel 0 the row index, channel 1 the column index of each pixel."""
    rows = torch.arange(h, dtype=torch.uint8)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.uint8)[None, :].expand(h, w)
    return torch.stack([rows, cols], -1).expand(batch, h, w, 2).contiguous()


def shifts(images: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
    """Per sample (dy, dx) of an edge-padded shift of `coordinate_images`, checked to be one
    rigid shift (every pixel moved alike, clamped at the edges): [B, 2]."""
    h, w = images.shape[1:3]
    out = []
    for img in shifted:
        dy = int(img[h // 2, w // 2, 0]) - h // 2
        dx = int(img[h // 2, w // 2, 1]) - w // 2
        want_r = (torch.arange(h) + dy).clamp(0, h - 1)
        want_c = (torch.arange(w) + dx).clamp(0, w - 1)
        assert torch.equal(img[:, :, 0].long(), want_r[:, None].expand(h, w))
        assert torch.equal(img[:, :, 1].long(), want_c[None, :].expand(h, w))
        out.append((dy, dx))
    return torch.tensor(out)


def test_random_shift_is_an_edge_padded_shift_of_at_most_4_pixels_differing_per_sample():
    images = coordinate_images(64)
    shifted = random_shift(images, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    d = shifts(images, shifted)
    assert d.abs().max() <= 4 and d.abs().max() == 4       # the full range is drawn
    assert len({tuple(x) for x in d.tolist()}) > 20          # independent per sample
    assert torch.equal(random_shift(images, pad=0), images)  # negative control: no padding


@pytest.mark.parametrize("shape", [(64, 32, 32, 6), (16, 20, 12, 9), (8, 9, 9, 1)])
def test_the_cpu_copies_and_the_device_gather_give_the_same_shifted_images(shape):
    """random_shift on the CPU copies windows out of a padded batch; on other devices it is one
    gather: both from the same offsets, byte for byte."""
    draw = lambda high, size, seed: torch.randint(  # noqa: E731
        0, high, size, generator=torch.Generator().manual_seed(seed))
    images = draw(256, shape, 1).to(torch.uint8)
    offsets = draw(2 * PAD + 1, (shape[0], 2), 2)
    copies = torch.from_numpy(_shift_copies(images.numpy(), offsets.tolist(), PAD))
    assert torch.equal(copies, _shift_gather(images, offsets, PAD))
    assert not torch.equal(copies, images)
    # random_shift draws its offsets the same way from its generator
    assert torch.equal(random_shift(images, torch.Generator().manual_seed(3)),
                       _shift_gather(images, draw(2 * PAD + 1, (shape[0], 2), 3), PAD))

def test_obs_and_next_obs_get_their_own_shifts_and_state_stays_untouched():
    batch = make_batch(rows=32)
    batch["next_pixels/front"] = batch["pixels/front"].copy()     # the same images
    out = observation_batch(batch, BATCH_KEYS, (CAM,), OBS, ACT, "cpu",
                            torch.Generator().manual_seed(0))
    obs, nxt = out["obs"]["front"], out["next_obs"]["front"]
    assert obs.shape == (32, *CAM.shape) and obs.dtype == torch.uint8
    assert not torch.equal(obs, nxt)
    assert torch.equal(out["obs"]["state"], torch.as_tensor(batch["obs"]))


def test_a_batch_without_a_cameras_images_or_with_wrong_ones_is_refused_naming_the_key():
    agent = make_agent()
    batch = make_batch()
    with pytest.raises(KeyError, match="next_pixels/front"):
        agent.update({k: v for k, v in batch.items() if k != "next_pixels/front"})
    with pytest.raises(ValueError, match="pixels/front: expected uint8"):
        agent.update({**batch, "pixels/front": batch["pixels/front"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"pixels/front: has shape \[16, 16, 15, 6\]"):
        agent.update({**batch, "pixels/front": batch["pixels/front"][:, :, 1:]})


# ---------------------------------------------------------------------- who trains the encoder
def test_the_critic_trains_the_encoder_and_the_actor_takes_a_copy_of_it_each_update():
    agent = make_agent()
    critic_trunk = agent.nets.critic.encoder.trunks
    actor_enc = agent.nets.actor.encoder
    assert same(weights(actor_enc.trunks), weights(critic_trunk))      # copied at construction
    for seed in range(2):
        before = weights(critic_trunk)
        actor_projection = weights(actor_enc.projections)
        agent.update(make_batch(seed=seed))
        assert not same(weights(critic_trunk), before)                   # L_Q trains the convs
        # The actor's convs are the critic's at the start of the update, untouched by L_pi.
        assert same(weights(actor_enc.trunks), before)
        assert not same(weights(actor_enc.projections), actor_projection)  # its own projection


def test_the_actor_loss_sends_no_gradient_into_any_conv_weight():
    agent = make_agent()
    batch = observation_batch(make_batch(), BATCH_KEYS, (CAM,), OBS, ACT, "cpu", None)
    loss, _ = actor_loss(agent.nets, batch, agent.cfg)
    loss.backward()
    conv = [p.grad for p in agent.nets.actor.encoder.trunks.parameters()]
    assert conv and all(g is None for g in conv)          # stopped at the trunk output
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in agent.nets.actor.encoder.projections.parameters())
    agent.nets.zero_grad(set_to_none=True)
    loss, _ = critic_loss(agent.nets, batch, agent.cfg)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in agent.nets.critic.encoder.trunks.parameters())


def test_without_the_stop_gradient_the_actor_loss_would_reach_the_convs():
    """Negative control of the test above: the same loss with detach_trunks off."""
    agent = make_agent()
    agent.nets.actor.encoder.detach_trunks = False
    batch = observation_batch(make_batch(), BATCH_KEYS, (CAM,), OBS, ACT, "cpu", None)
    actor_loss(agent.nets, batch, agent.cfg)[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in agent.nets.actor.encoder.trunks.parameters())


# ------------------------------------------------------------------------------ target critic
def test_the_target_critic_evaluates_only_the_z_drawn_members_and_tracks_the_encoder():
    agent = make_agent(critic_ensemble_size=10, critic_subset_size=1)
    nets = agent.nets
    batch = observation_batch(make_batch(rows=N), BATCH_KEYS, (CAM,), OBS, ACT, "cpu", None)
    next_action = torch.rand(N, ACT) * 2 - 1
    members = torch.tensor([7])
    with torch.no_grad():
        subset = nets.target_critic(batch["next_obs"], next_action, members)
        full = nets.target_critic(batch["next_obs"], next_action)
    assert subset.shape == (1, N) and full.shape == (10, N)
    torch.testing.assert_close(subset[0], full[7], rtol=0, atol=1e-6)
    batch.update(next_action=next_action, next_log_prob=torch.zeros(N))
    _, info = critic_loss(nets, batch, agent.cfg, members=members)
    y = batch["reward"] + agent.cfg.discount * batch["mask"] * full[7]   # no entropy backup
    torch.testing.assert_close(info["target_q_mean"], y.mean(), rtol=0, atol=1e-5)
    target_trunk = weights(nets.target_critic.encoder.trunks)
    agent.update(make_batch())
    moved = weights(nets.target_critic.encoder.trunks)
    assert not same(moved, target_trunk)                  # Polyak copy, encoder included
    assert not same(moved, weights(nets.critic.encoder.trunks))


# ------------------------------------------------------------------------------ pretrained file
class PerFrame(nn.Module):
    """A stand-in for a pretrained backbone: float [N, 3, H, W] -> [N, 5]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def save_encoder(path, dynamic: bool = True):
    """A per-frame encoder file as a user makes one: torch.export.save, batch dynamic."""
    torch.manual_seed(0)
    shapes = ({0: torch.export.Dim("n")},) if dynamic else None
    program = torch.export.export(PerFrame().eval(), (torch.zeros(2, 3, 16, 16),),
                                  dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    return save_encoder(tmp_path_factory.mktemp("enc") / "backbone.pt2")


def test_a_pretrained_encoder_file_is_used_frozen_per_frame(encoder_file):
    agent = make_agent(pretrained_encoder=encoder_file)
    trunk = agent.nets.critic.encoder.trunks["front"]
    assert isinstance(trunk, FrozenTrunk) and trunk.out_dim == CAM.frame_stack * 5
    assert not isinstance(agent.nets.actor.encoder.trunks["front"], ConvTrunk)
    frozen, projection = weights(trunk), weights(agent.nets.critic.encoder.projections)
    agent.update(make_batch())
    assert same(weights(trunk), frozen)
    assert not same(weights(agent.nets.critic.encoder.projections), projection)
    # per frame: changing only the newest frame changes only the newest frame's features
    images = torch.as_tensor(make_batch()["pixels/front"][:2])
    other = images.clone()
    other[..., 3:] = 255 - other[..., 3:]
    a, b = trunk(images), trunk(other)
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.equal(a[:, 5:], b[:, 5:])


def test_a_missing_or_mismatched_encoder_file_is_refused_naming_the_key(tmp_path, encoder_file):
    with pytest.raises(ValueError, match=r"^algorithm.pretrained_encoder: .*nope.pt does not exist"):
        make_agent(pretrained_encoder=tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"^algorithm.pretrained_encoder: .* not a torch.export "
                                         r"program"):
        make_agent(pretrained_encoder=junk)
    fixed = save_encoder(tmp_path / "fixed.pt2", dynamic=False)   # exported for batch 2 only
    with pytest.raises(ValueError, match=r"^algorithm.pretrained_encoder: .*with a dynamic N"):
        make_agent(pretrained_encoder=fixed)
    grey = CameraSpec("front", 16, 16, 1, 3)            # the file takes 3 channels per frame
    with pytest.raises(ValueError, match=r"^algorithm.pretrained_encoder: .*cannot encode camera "
                                         r"'front' frames \[N, 1, 16, 16\]"):
        make_agent(pretrained_encoder=encoder_file, cameras=(grey,))
    with pytest.raises(ValueError, match=r"^algorithm.pretrained_encoder: set, but robot.cameras "
                                         r"is empty"):
        make_agent(pretrained_encoder=encoder_file, cameras=())


# ----------------------------------------------------------------------------- config, refusal
@pytest.mark.parametrize("name", ["obac", "oema"])
def test_obac_and_oema_refuse_cameras_at_start_in_one_line(name):
    cfg = O2OConfig.model_validate({"algorithm": {"name": name}})
    with pytest.raises(ValueError, match=f"^algorithm.name: {name} does not take camera "
                                         r"observations \(robot.cameras has 1\); use one of"):
        build_agent(cfg, OBS, ACT, cameras=(CAM,))
    assert build_agent(cfg, OBS, ACT).cameras == ()         # control: vectors are fine


def test_the_pixel_preset_is_the_official_setting():
    from o2o_robot.config import load_config
    from pathlib import Path
    preset = Path(__file__).resolve().parents[1] / "config" / "presets" / "rlpd_pixels.yaml"
    cfg = load_config(preset)
    algo = cfg.algorithm
    assert (algo.critic_ensemble_size, algo.critic_subset_size, algo.backup_entropy,
            algo.init_temperature, cfg.learner.utd_ratio, cfg.sampler.batch_size) == \
        (10, 1, False, 0.1, 1, 256)
    assert (algo.latent_dim, algo.encoder_features, algo.pretrained_encoder) == \
        (50, [32, 64, 128, 256], None)
    trunk = ConvTrunk(CameraSpec("c", 64, 64, 3, 3), algo.encoder_features)
    assert trunk.out_dim == 256 * 3 * 3                   # 64 -> 31 -> 15 -> 7 -> 3, VALID


# ------------------------------------------------------------------------------------ learning
def side_images(targets: np.ndarray, blank: bool = False) -> np.ndarray:
    """16 x 16 RGB: the left half lit for target +1, the right half for -1 (all black: blank)."""
    x = np.zeros((len(targets), 16, 16, 3), np.uint8)
    if not blank:
        x[targets > 0, :, :8] = 255
        x[targets < 0, :, 8:] = 255
    return x


def learn_side_task(blank: bool, updates: int = 150, seed: int = 1) -> np.ndarray:
    """One-step episodes whose best action (+1 or -1) only the image shows (the state is 0):
    reward 1 - |a - target| on uniform random actions. Returns the deterministic actions for a
    left-lit and a right-lit image after `updates` updates of batch 64."""
    rng = np.random.default_rng(seed)
    n = 1024
    target = rng.choice([-1.0, 1.0], n)
    action = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    reward = (1 - np.abs(action[:, 0] - target)).astype(np.float32)
    pixels = side_images(target, blank)
    cfg = RLPDConfig(hidden_dims=[32, 32], encoder_features=[8, 16], latent_dim=16,
                     critic_ensemble_size=2, critic_subset_size=1, init_temperature=0.1,
                     backup_entropy=False)
    agent = RLPD(1, 1, cfg, batch_size=64, seed=seed,
                 cameras=(CameraSpec("front", 16, 16, 3, 1),))
    zeros = np.zeros((64, 1), np.float32)
    for _ in range(updates):
        i = rng.integers(0, n, 64)
        agent.update({"obs": zeros, "next_obs": zeros, "action": action[i], "reward": reward[i],
                      "mask": zeros[:, 0], "pixels/front": pixels[i],
                      "next_pixels/front": pixels[i]})
    probe = side_images(np.array([1.0, -1.0]))
    return agent.act({"state": np.zeros((2, 1), np.float32), "front": probe},
                     deterministic=True)[:, 0]


def test_pixel_rlpd_learns_a_task_only_the_image_shows_and_not_with_blank_images():
    left, right = learn_side_task(blank=False)
    assert left > 0.5 and right < -0.5, (left, right)
    left, right = learn_side_task(blank=True)    # negative control: the same, images all black
    assert not (left > 0.5 and right < -0.5), (left, right)
