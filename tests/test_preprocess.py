"""Preprocessing: log-mel filterbank and spectrogram, resize, normalisation, manifest checks."""

from __future__ import annotations

import numpy as np
import pytest

from wmpc import types
from wmpc.config import ConfigError, PreprocessConfig, SensorBufferConfig, build_config
from wmpc.preprocess import (
    INPUT_NAMES,
    PreprocessError,
    Preprocessor,
    compute_normalisation,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    modalities_spec,
    n_frames,
    resize_image,
    with_proprio_fields,
)

RATE = 16000


def observation(rng: np.random.Generator, tactile_shape=(4, 4, 3)) -> types.Observation:
    """A random but well-formed observation."""
    return types.Observation(
        stamp_s=1.0,
        image_rgb=rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
        audio=rng.uniform(-0.5, 0.5, 2048).astype(np.float32),
        audio_rate_hz=float(RATE),
        tactile=rng.normal(size=tactile_shape).astype(np.float32),
        joint_position_rad=rng.normal(size=7),
        ee_pose=types.Pose(rng.normal(size=3), types.TOOL_DOWN_XYZW),
        wrench_wrist=types.Wrench(rng.normal(size=3), rng.normal(size=3)),
    )


def spec() -> dict:
    return modalities_spec(SensorBufferConfig(), PreprocessConfig(), 4, 4)


def test_mel_scale_round_trips_and_filters_tile_the_band():
    f = np.array([0.0, 100.0, 1000.0, 7999.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-6)
    assert hz_to_mel(1000.0) == pytest.approx(999.99, abs=0.1)  # the HTK scale's anchor
    bank = mel_filterbank(RATE, 512, 32, 20.0, 8000.0)
    assert bank.shape == (32, 257) and bank.dtype == np.float32
    assert bank.max() <= 1.0 and bank.min() >= 0.0
    # Each band peaks later than the one before (ordered in frequency).
    assert np.all(np.diff(bank.argmax(axis=1)) >= 0)
    # Between the first and last centre, every FFT bin is covered by some band.
    first, last = bank[0].argmax(), bank[-1].argmax()
    assert np.all(bank[:, first : last + 1].sum(axis=0) > 0.4)
    with pytest.raises(PreprocessError, match="Nyquist"):
        mel_filterbank(RATE, 512, 32, 20.0, 9000.0)
    with pytest.raises(PreprocessError, match="cover no FFT bin"):
        mel_filterbank(RATE, 64, 64, 20.0, 8000.0)


def test_log_mel_puts_a_tone_in_its_band_and_keeps_silence_finite():
    bank = mel_filterbank(RATE, 512, 32, 20.0, 8000.0)
    t = np.arange(2048) / RATE
    for tone_hz in (300.0, 1000.0, 4000.0):
        spectrum = log_mel(np.sin(2 * np.pi * tone_hz * t) * 0.5, bank, 512, 256, 1e-6)
        assert spectrum.shape == (32, n_frames(2048, 512, 256)) == (32, 7)
        # The loudest band is one whose filter covers the tone's bin.
        tone_bin = round(tone_hz * 512 / RATE)
        assert np.all(bank[spectrum.argmax(axis=0), tone_bin] > 0.25)
        far = np.flatnonzero(bank[:, tone_bin - 3 : tone_bin + 4].sum(axis=1) == 0)
        assert spectrum[far].max() < spectrum.max() - 5  # far bands are > 5 nepers quieter
    silence = log_mel(np.zeros(2048), bank, 512, 256, 1e-6)
    assert np.all(np.isfinite(silence))
    np.testing.assert_allclose(silence, np.log(1e-6), rtol=1e-6)


def test_resize_crops_the_centre_before_area_resize():
    image = np.zeros((480, 640, 3), np.uint8)
    image[:, :80] = 255  # a white band on the left: cropped away by the centre square
    image[:, -80:] = 255
    image[200:280, 280:360] = (10, 200, 30)
    small = resize_image(image, 64, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    assert small[:, 0].max() == 0 and small[:, -1].max() == 0
    assert small[32, 32].tolist() == [10, 200, 30]
    assert resize_image(small, 64, 64) is not small  # copies even at the target size
    np.testing.assert_array_equal(resize_image(small, 64, 64), small)


def test_a_crop_box_shows_the_model_that_part_of_the_frame_at_any_camera_size():
    box = (0.25, 0.80, 0.2375, 0.7625)  # rows 30-96, columns 38-122 of a 160 x 120 frame
    for height, width in ((120, 160), (480, 640)):
        image = np.zeros((height, width, 3), np.uint8)
        image[: round(0.25 * height)] = 255  # above the box: never seen
        image[:, round(0.7625 * width) :] = 255  # right of it
        image[round(0.5 * height), round(0.5 * width)] = (200, 0, 0)  # a dot at the frame centre
        small = resize_image(image, 64, 64, box)
        assert small.shape == (64, 64, 3), (height, width)
        assert small.max() < 255 and small[..., 0].max() > 0  # no white; the dot, averaged
        # The frame's centre lies at 0.5 of its height: (0.5 - 0.25) / 0.55 of the box.
        row, col = np.unravel_index(small[..., 0].argmax(), (64, 64))
        assert abs(row - 0.25 / 0.55 * 64) <= 2 and abs(col - 32) <= 2
    # The manifest carries the box and the runtime's preprocessing reads it back.
    modalities = modalities_spec(SensorBufferConfig(), PreprocessConfig(image_crop=box), 4, 4)
    crop = modalities["image"]["crop"]
    assert crop == {"top": 0.25, "bottom": 0.8, "left": 0.2375, "right": 0.7625}
    obs = observation(np.random.default_rng(4))
    np.testing.assert_array_equal(
        Preprocessor(modalities, None).features(obs)["image"],
        resize_image(obs.image_rgb, 64, 64, box),
    )
    assert Preprocessor(spec(), None).crop_box is None  # "centre"
    bad = spec()
    bad["image"]["crop"] = {"top": 0.5, "bottom": 0.2, "left": 0.0, "right": 1.0}
    with pytest.raises(PreprocessError, match=r"image\.crop.*top < bottom"):
        Preprocessor(bad, None)
    bad["image"]["crop"] = "middle"
    with pytest.raises(PreprocessError, match="neither 'centre' nor a box"):
        Preprocessor(bad, None)
    with pytest.raises(ConfigError, match="image_crop"):
        build_config(PreprocessConfig, {"image_crop": [0.1, 0.9, 0.5]})


def test_features_and_normalisation_shapes_and_statistics():
    rng = np.random.default_rng(0)
    pre = Preprocessor(spec(), None)
    features = [pre.features(observation(rng)) for _ in range(64)]
    stacked = {name: np.stack([f[name] for f in features]) for name in INPUT_NAMES}
    assert stacked["image"].shape == (64, 64, 64, 3) and stacked["image"].dtype == np.uint8
    assert stacked["audio"].shape == (64, 32, 7)
    assert stacked["tactile"].shape == (64, 4, 4, 3)
    assert stacked["proprio"].shape == (64, 16)
    with pytest.raises(PreprocessError, match="without normalisation"):
        pre.normalise(features[0])

    stats = compute_normalisation(stacked, min_std=0.01)
    chunked = compute_normalisation(stacked, min_std=0.01, chunk_rows=5)
    for name in INPUT_NAMES:
        np.testing.assert_allclose(chunked[name]["mean"], stats[name]["mean"], rtol=1e-9)
        np.testing.assert_allclose(chunked[name]["std"], stats[name]["std"], rtol=1e-7)
    pre = Preprocessor(spec(), stats)
    batch = pre.normalise(stacked)
    assert batch["image"].shape == (64, 3, 64, 64)
    assert all(x.dtype == np.float32 and x.flags.c_contiguous for x in batch.values())
    # Normalised with their own statistics: zero mean, unit std per channel / band / element.
    np.testing.assert_allclose(batch["image"].mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(batch["image"].std(axis=(0, 2, 3)), 1, atol=1e-3)
    np.testing.assert_allclose(batch["audio"].mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(batch["proprio"].std(axis=0), 1, atol=1e-3)
    # One observation through __call__ equals its row of the batch: the same code path.
    obs_inputs = Preprocessor(spec(), stats)(observation(np.random.default_rng(0)))
    for name in INPUT_NAMES:
        assert obs_inputs[name].shape == (1, *batch[name].shape[1:])
        np.testing.assert_array_equal(obs_inputs[name][0], batch[name][0])


def test_byte_images_normalise_exactly_as_float_arithmetic():
    # 8-bit frames go through a per-channel lookup table (speed); it must hold the very float32
    # results of (x / 255 - mean) / std, for batches with any leading axes (training windows).
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (5, 6, 64, 64, 3), dtype=np.uint8)
    frames.reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every level
    others = {
        "audio": rng.standard_normal((5, 6, 32, 7)).astype(np.float32),
        "tactile": rng.random((5, 6, 4, 4, 3)).astype(np.float32),
        "proprio": rng.random((5, 6, 16)).astype(np.float32),
    }
    stats = compute_normalisation(
        {"image": frames[:, 0], **{k: v[:, 0] for k, v in others.items()}}, min_std=0.01
    )
    pre = Preprocessor(spec(), stats)
    by_table = pre.normalise({"image": frames, **others})["image"]
    by_arithmetic = pre.normalise({"image": frames.astype(np.float32), **others})["image"]
    assert by_table.shape == (5, 6, 3, 64, 64) and by_table.flags.c_contiguous
    np.testing.assert_array_equal(by_table, by_arithmetic)
    mean = np.array(stats["image"]["mean"], np.float32).reshape(3, 1, 1)
    inv_std = (1.0 / np.array(stats["image"]["std"], np.float32)).reshape(3, 1, 1)
    expected = (np.moveaxis(frames, -1, -3) * np.float32(1 / 255) - mean) * inv_std
    np.testing.assert_array_equal(by_table, expected.astype(np.float32))


def test_constant_input_std_is_floored():
    stacked = {
        "image": np.full((4, 8, 8, 3), 7, np.uint8),
        "audio": np.zeros((4, 32, 7), np.float32),
        "tactile": np.zeros((4, 4, 4, 3), np.float32),
        "proprio": np.zeros((4, 16), np.float32),
    }
    stats = compute_normalisation(stacked, min_std=0.05)
    assert all(min(s["std"]) == 0.05 for s in stats.values())
    assert stats["image"]["shape"] == [3, 1, 1]
    assert stats["audio"]["shape"] == [32, 1]
    assert stats["tactile"]["shape"] == [4, 4, 3]


def test_mismatched_observations_and_manifests_name_the_problem():
    rng = np.random.default_rng(1)
    pre = Preprocessor(spec(), None)
    with pytest.raises(PreprocessError, match="tactile"):
        pre.features(observation(rng, tactile_shape=(5, 1, 3)))
    obs = observation(rng)
    short = types.Observation(**{**obs.__dict__, "audio": obs.audio[:1000]})
    with pytest.raises(PreprocessError, match=r"audio must be \(2048,\)"):
        pre.features(short)
    slow = types.Observation(**{**obs.__dict__, "audio_rate_hz": 8000.0})
    with pytest.raises(PreprocessError, match="8000"):
        pre.features(slow)
    joints = types.Observation(**{**obs.__dict__, "joint_position_rad": np.zeros(6)})
    with pytest.raises(PreprocessError, match="joint_position_rad"):
        pre.features(joints)

    bad_spec = spec()
    del bad_spec["audio"]["n_fft"]
    with pytest.raises(PreprocessError, match="lacks 'n_fft'"):
        Preprocessor(bad_spec, None)
    stats = {name: {"mean": [0.0], "std": [1.0], "shape": [1]} for name in INPUT_NAMES}
    del stats["proprio"]
    with pytest.raises(PreprocessError, match="lacks input 'proprio'"):
        Preprocessor(spec(), stats)
    stats["proprio"] = {"mean": [0.0] * 3, "std": [1.0] * 3, "shape": [3]}
    with pytest.raises(PreprocessError, match="does not broadcast"):
        Preprocessor(spec(), stats)
    stats["proprio"] = {"mean": [0.0] * 16, "std": [0.0] * 16, "shape": [16]}
    with pytest.raises(PreprocessError, match="std > 0"):
        Preprocessor(spec(), stats)


def test_a_model_without_the_wrist_wrench_never_reads_it():
    rng = np.random.default_rng(2)
    full = Preprocessor(spec(), None)
    stored = np.stack([full.features(observation(rng))["proprio"] for _ in range(8)])
    assert stored.shape == (8, 16)  # the dataset stores every field
    fields = ["joint_position_rad", "ee_position_m"]
    modalities = with_proprio_fields(spec(), tuple(fields))
    assert modalities["proprio"]["fields"] == fields and modalities["proprio"]["size"] == 10
    stats = {
        **{n: {"mean": [0.0], "std": [1.0], "shape": [1]} for n in INPUT_NAMES},
        "proprio": {"mean": [0.0] * 10, "std": [2.0] * 10, "shape": [10]},
    }
    pre = Preprocessor(modalities, stats)
    assert pre.input_shapes["proprio"] == (10,)
    # Stored features: the prefix the model takes; an observation: only those fields built.
    np.testing.assert_array_equal(pre.take_proprio(stored), stored[:, :10])
    obs = observation(rng)
    built = pre.features(obs)["proprio"]
    np.testing.assert_array_equal(built, full.features(obs)["proprio"][:10])
    pushed = types.Observation(**{**obs.__dict__, "wrench_wrist": types.Wrench.zero()})
    np.testing.assert_array_equal(pre(pushed)["proprio"], pre(obs)["proprio"])
    with pytest.raises(PreprocessError, match="proprio features have 12 values"):
        pre.take_proprio(np.zeros((2, 12), np.float32))

    wrench_only = spec()
    wrench_only["proprio"]["fields"] = ["joint_position_rad", "wrench_wrist"]
    with pytest.raises(PreprocessError, match="fields"):
        Preprocessor(wrench_only, None)
