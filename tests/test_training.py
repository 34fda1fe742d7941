"""Training: reproducibility for a seed, data split and windows, learning, checkpoints, curves.

Tiny models on the synthetic episode bags of conftest, so each run takes seconds.
"""

from __future__ import annotations

import pytest
import torch

from wmpc.config import ConfigError, PreprocessConfig, TrainConfig
from wmpc.training import train
from wmpc.training.dataset import DatasetSettings, prepare_episodes

TINY = {
    "batch_size": 32,
    "horizon": 2,
    "hidden_dim": 32,
    "latent_dim": 16,
    "log_period_s": 1e3,
    "num_threads": 1,
}
# 32 x 32 images keep the convolutions (the bulk of the cost) small in tests.
SMALL_IMAGES = DatasetSettings(preprocess=PreprocessConfig(image_height=32, image_width=32))


@pytest.fixture(scope="module")
def episodes(synthetic_bags):
    return prepare_episodes(synthetic_bags, SMALL_IMAGES)


def run(episodes, progress=lambda line: None, **overrides):
    train_eps, held_out = train.split_episodes(episodes, 0.25, 0)
    config = TrainConfig(**{**TINY, "epochs": 1, **overrides})
    return train.train(train_eps, held_out, config, progress=progress)


def test_two_runs_with_one_seed_give_identical_weights(episodes):
    first = run(episodes, seed=7).net.state_dict()
    second = run(episodes, seed=7).net.state_dict()
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    other = run(episodes, seed=8).net.state_dict()
    assert not torch.equal(first["fuse.0.weight"], other["fuse.0.weight"])


@pytest.mark.parametrize("horizon", [1, 2, 3])
def test_targets_encoded_on_a_helper_thread_give_the_same_weights(episodes, horizon):
    """The two-core path (TrainConfig.helper_thread) splits the encodings, not the numbers."""
    lines: dict[bool, list[str]] = {False: [], True: []}
    one = run(episodes, lines[False].append, seed=7, horizon=horizon, helper_thread=False)
    two = run(episodes, lines[True].append, seed=7, horizon=horizon, helper_thread=True)
    assert "1 torch thread(s) and a helper thread" in lines[True][0]
    assert "helper" not in lines[False][0]
    first, second = one.net.state_dict(), two.net.state_dict()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert one.history == two.history
    assert one.validation == two.validation


def test_split_is_seeded_disjoint_and_complete(episodes):
    train_eps, held = train.split_episodes(episodes, 0.25, 3)
    assert len(held) == 1 and len(train_eps) == 3
    assert {e.name for e in train_eps} | {e.name for e in held} == {e.name for e in episodes}
    again = train.split_episodes(list(reversed(episodes)), 0.25, 3)
    assert [e.name for e in again[1]] == [e.name for e in held]
    assert train.split_episodes(episodes, 0.0, 3)[1] == []
    assert len(train.split_episodes(episodes[:1], 0.5, 3)[0]) == 1  # one episode: all train


def test_windows_stay_inside_their_episode(episodes):
    data = train.stack_episodes(episodes, horizon=4)
    boundaries = set()
    row = 0
    for e in episodes:
        row += e.ticks
        boundaries.add(row)
    for start in data.starts:
        assert not any(start < b < start + 5 for b in boundaries)
    assert data.starts.size == sum(e.window_starts(4).size for e in episodes)


def test_training_reduces_the_loss_and_checkpoints_round_trip(episodes, tmp_path):
    result = run(episodes, epochs=12, learning_rate=3e-3)
    epoch_ends = [row for row in result.history if float(row["epoch"]).is_integer()]
    assert len(epoch_ends) == 12
    # Three toy episodes are learned quickly: the training loss falls by more than half.
    assert epoch_ends[-1]["total"] < 0.5 * epoch_ends[0]["total"]
    assert epoch_ends[-1]["ee_position_m"] < 0.5 * epoch_ends[0]["ee_position_m"]
    assert len(result.validation) == 12
    assert result.summary["windows_per_s"] > 0
    path = tmp_path / "checkpoint.pt"
    train.save_checkpoint(result, path)
    loaded = train.load_checkpoint(path)
    z = torch.randn(3, 16)
    actions = torch.rand(3, 4, 4) * 0.01
    with torch.no_grad():
        expected = result.net.rollout(z, actions)
        got = loaded.rollout(z, actions)
    for name in expected:
        assert torch.equal(expected[name], got[name])
    curves = train.plot_curves(result, tmp_path / "curves")
    assert [p.name for p in curves] == ["loss.png", "loss_terms.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in curves)


def test_bad_training_settings_are_named(episodes):
    with pytest.raises(ConfigError, match="held_out_fraction"):
        TrainConfig(held_out_fraction=1.0)
    with pytest.raises(ConfigError, match="image_dropout"):
        TrainConfig(image_dropout=1.0)
    with pytest.raises(ValueError, match="no training window of 101 consecutive ticks"):
        run(episodes, horizon=100)


def test_training_without_the_wrist_wrench_drops_it_from_the_input(episodes):
    result = run(episodes, proprio_wrench=False)
    proprio = result.modalities["proprio"]
    joints = len(proprio["joint_names"])
    assert proprio["fields"] == ["joint_position_rad", "ee_position_m"]
    assert result.net.input_shapes["proprio"] == (joints + 3,)
    assert len(result.normalisation["proprio"]["mean"]) == joints + 3
    assert result.net.ee_index == joints  # the ee position still lands in z
    with_wrench = run(episodes)
    assert with_wrench.net.input_shapes["proprio"] == (joints + 9,)
    assert with_wrench.net.ee_index == joints


def test_wrench_noise_moves_the_wrench_inputs_only_and_is_seeded(episodes, monkeypatch):
    """wrench_noise: a per-window bias plus per-tick noise on the wrist wrench's normalised
    inputs, nothing else changed; the same seed gives the same noise and weights."""
    batches = []
    window_losses = train.window_losses

    def record(net, batch, config, helper=None):
        if torch.is_grad_enabled():  # training steps (validation runs without gradients)
            batches.append(batch["inputs"]["proprio"].clone())
        return window_losses(net, batch, config, helper)

    monkeypatch.setattr(train, "window_losses", record)
    clean = run(episodes, seed=7)
    clean_inputs, batches[:] = list(batches), []
    noisy = run(episodes, seed=7, wrench_noise=0.5)
    noisy_inputs, batches[:] = list(batches), []
    again = run(episodes, seed=7, wrench_noise=0.5)
    joints = len(clean.modalities["proprio"]["joint_names"])
    wrench = slice(joints + 3, joints + 3 + 6)
    for before, after, repeat in zip(clean_inputs, noisy_inputs, batches, strict=True):
        torch.testing.assert_close(after[..., : wrench.start], before[..., : wrench.start])
        added = (after - before)[..., wrench]  # (B, H + 1, 6)
        assert 0.5 < added.std().item() < 0.9  # bias and white noise, 0.5 each: ~0.71
        assert torch.equal(after, repeat)
    for name, value in noisy.net.state_dict().items():
        assert torch.equal(value, again.net.state_dict()[name]), name
    fuse = "fuse.0.weight"
    assert not torch.equal(clean.net.state_dict()[fuse], noisy.net.state_dict()[fuse])
    with pytest.raises(ConfigError, match="proprio_wrench"):
        TrainConfig(wrench_noise=0.5, proprio_wrench=False)


def test_image_dropout_removes_the_image_of_a_seeded_share_of_windows(episodes, monkeypatch):
    seen = []
    window_losses = train.window_losses

    def record(net, batch, config, helper=None):
        images = batch["inputs"]["image"]
        seen.append((images.flatten(1) == 0).all(dim=1).tolist())  # removed, per window
        return window_losses(net, batch, config, helper)

    monkeypatch.setattr(train, "window_losses", record)
    first = run(episodes, seed=7, image_dropout=0.5, epochs=2)
    removed = [flag for step in seen for flag in step]
    assert 0.3 < sum(removed) / len(removed) < 0.7
    seen.clear()
    second = run(episodes, seed=7, image_dropout=0.5, epochs=2)
    assert [flag for step in seen for flag in step] == removed
    for name, value in first.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[name]), name
    # Off (the default), no window loses its image and the weights are another run's.
    seen.clear()
    plain = run(episodes, seed=7, epochs=2)
    assert not any(flag for step in seen for flag in step)
    fuse = "fuse.0.weight"
    assert not torch.equal(plain.net.state_dict()[fuse], first.net.state_dict()[fuse])
