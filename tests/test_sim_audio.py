"""Audio synthesised from real MuJoCo contacts, checked against real impact recordings."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import soundfile

from test_sim_sensors import BOX_MASS_KG, GRAVITY_M_S2, pad_xml
from wmpc.sim.audio import AudioSynth
from wmpc.sim.sensors import SensorError

RATE_HZ = 16000
CHUNK = 512
BOX_HALF_M = 0.015
PAD_TOP_M = 0.02


def drop(height_m: float, seed: int = 0, steps: int = 400, **synth_options) -> tuple:
    """Drop the box from `height_m` above the pad; (audio int16, synth) after `steps` of 2 ms."""
    model = mujoco.MjModel.from_xml_string(pad_xml(drop_z_m=PAD_TOP_M + BOX_HALF_M + height_m))
    data = mujoco.MjData(model)
    synth = AudioSynth(model, RATE_HZ, np.random.default_rng(seed), **synth_options)
    chunks = []
    for _ in range(steps):
        mujoco.mj_step(model, data)
        synth.observe(data, model.opt.timestep)
        if synth.available >= CHUNK:
            chunks.append(synth.read(CHUNK))
    return np.concatenate(chunks), synth


def decay_to_minus_20db_s(audio: np.ndarray, rate_hz: float) -> float:
    """Time from the loudest 5 ms RMS window until the RMS envelope first falls 20 dB."""
    window = int(0.005 * rate_hz)
    n = len(audio) // window
    envelope = np.sqrt((audio[: n * window].reshape(n, window) ** 2).mean(axis=1))
    peak = int(np.argmax(envelope))
    below = np.flatnonzero(envelope[peak:] < 0.1 * envelope[peak])
    assert below.size, "the sound never decays by 20 dB"
    return below[0] * window / rate_hz


def centroid_hz(audio: np.ndarray, rate_hz: float, max_hz: float = 8000.0) -> float:
    """Spectral centroid of the 50 ms after the loudest sample, below `max_hz`."""
    start = int(np.argmax(np.abs(audio)))
    segment = audio[start : start + int(0.05 * rate_hz)]
    power = np.abs(np.fft.rfft(segment * np.hanning(len(segment)))) ** 2
    freqs = np.fft.rfftfreq(len(segment), 1.0 / rate_hz)
    keep = freqs < max_hz
    return float((freqs[keep] * power[keep]).sum() / power[keep].sum())


def test_shapes_dtype_and_stamps():
    audio, synth = drop(0.03, steps=300)
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert len(audio) == (300 * 0.002 * RATE_HZ) // CHUNK * CHUNK
    assert synth.read_position_s == pytest.approx(len(audio) / RATE_HZ)
    assert 0 <= synth.available < CHUNK


def test_same_seed_is_bit_identical_other_seed_is_not():
    first, _ = drop(0.05, seed=3)
    second, _ = drop(0.05, seed=3)
    other, _ = drop(0.05, seed=4)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_impact_impulse_is_momentum_of_a_flat_landing():
    """A box landing flat delivers m v (summed over its corner contacts) at the right time."""
    height_m = 0.05
    _, synth = drop(height_m)
    assert len(synth.onsets) >= 1
    time_s, impulse_ns = synth.onsets[0]
    speed_m_s = np.sqrt(2 * GRAVITY_M_S2 * height_m)
    assert impulse_ns == pytest.approx(BOX_MASS_KG * speed_m_s, rel=0.1)
    assert time_s == pytest.approx(np.sqrt(2 * height_m / GRAVITY_M_S2), abs=0.006)


def test_harder_impact_is_louder():
    soft, _ = drop(0.01, noise_std=0.0)
    hard, _ = drop(0.10, noise_std=0.0)
    peak_soft, peak_hard = np.abs(soft).max(), np.abs(hard).max()
    assert peak_soft > 200, "a 1 cm drop should still be audible"
    # Impulse grows as sqrt(height): 10x the height, ~3.2x the amplitude.
    assert 2.5 < peak_hard / peak_soft < 4.0


def test_quiet_before_the_impact():
    """Before the box lands there is only background noise, at its configured level."""
    audio, synth = drop(0.1, noise_std=0.002)
    landing = int(synth.onsets[0][0] * RATE_HZ)
    before = audio[: landing - 16].astype(float) / 32767
    assert before.std() == pytest.approx(0.002, rel=0.1)
    after = audio[landing : landing + 800].astype(float) / 32767
    assert after.std() > 5 * before.std()


def test_click_matches_real_impact_recordings(external_data):
    """Decay and spectral centroid of a synthesised click lie in the range of real impacts.

    The bounds come from the recordings (snare, wood block, finger snap), widened by 2x: a
    click that rings for a second or sounds like a low thud or a hiss fails.
    """
    decays, centroids = [], []
    for path in sorted((external_data / "audio").glob("*.wav")):
        recording, rate_hz = soundfile.read(path, dtype="float32")
        if recording.ndim > 1:
            recording = recording.mean(axis=1)
        decays.append(decay_to_minus_20db_s(recording, rate_hz))
        centroids.append(centroid_hz(recording, rate_hz))
    assert len(decays) >= 3, "expected the three CC0 impact recordings"

    audio, _ = drop(0.05, noise_std=0.0)
    click = audio.astype(float) / 32767
    decay_s, centre_hz = decay_to_minus_20db_s(click, RATE_HZ), centroid_hz(click, RATE_HZ)
    assert min(decays) / 2 <= decay_s <= 2 * max(decays), (decay_s, decays)
    assert min(centroids) / 2 <= centre_hz <= 2 * max(centroids), (centre_hz, centroids)


SLIDE_XML = """
<mujoco>
  <option timestep="0.002"/>
  <worldbody>
    <geom name="floor" type="plane" size="2 2 .05"/>
    <body name="sled" pos="0 0 0.0198">
      <joint name="slide" type="slide" axis="1 0 0"/>
      <geom name="sled_geom" type="box" size=".02 .02 .02" mass="0.5"/>
    </body>
    <body name="rotor" pos="1 1 0.5">
      <joint name="spin" type="hinge" axis="0 0 1" armature="0.1"/>
      <geom type="cylinder" size=".05 .01" mass="1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="slide_motor" joint="slide" kv="500"/>
    <velocity name="spin_motor" joint="spin" kv="5"/>
  </actuator>
</mujoco>
"""


def run_slide(slide_m_s: float, spin_rad_s: float, seconds: float = 1.0) -> np.ndarray:
    """Drive the sled and the rotor at given speeds; audio of the last half second as floats.

    The sled rides on one slide joint, pressed 0.2 mm into the floor, so it keeps touching
    (a free box chatters on a plane when dragged, which would add clicks to the noise).
    """
    model = mujoco.MjModel.from_xml_string(SLIDE_XML)
    data = mujoco.MjData(model)
    synth = AudioSynth(model, RATE_HZ, np.random.default_rng(0), noise_std=0.0005)
    data.ctrl[:] = [slide_m_s, spin_rad_s]
    chunks = []
    for _ in range(int(seconds / model.opt.timestep)):
        mujoco.mj_step(model, data)
        synth.observe(data, model.opt.timestep)
        if synth.available >= CHUNK:
            chunks.append(synth.read(CHUNK))
    audio = np.concatenate(chunks).astype(float) / 32767
    return audio[len(audio) // 2 :]


def test_sliding_and_motors_are_heard():
    """Sliding contact adds friction noise and a spinning actuated joint adds a hum."""
    still = run_slide(0.0, 0.0).std()
    sliding = run_slide(0.2, 0.0).std()
    faster = run_slide(0.4, 0.0).std()
    spinning = run_slide(0.0, 3.0).std()
    assert sliding > 3 * still
    assert faster > 1.5 * sliding, "friction noise grows with slip speed"
    assert spinning > 3 * still


def test_reading_ahead_of_physics_is_refused():
    model = mujoco.MjModel.from_xml_string(pad_xml())
    synth = AudioSynth(model, RATE_HZ, np.random.default_rng(0))
    data = mujoco.MjData(model)
    mujoco.mj_step(model, data)
    synth.observe(data, model.opt.timestep)
    assert synth.available == 32
    with pytest.raises(SensorError, match="covered only 32 unread samples"):
        synth.read(CHUNK)


def test_unread_audio_is_capped_like_a_capture_buffer():
    """A world whose audio nobody reads keeps only the newest `max_unread_s` of it."""
    model = mujoco.MjModel.from_xml_string(SLIDE_XML)
    data = mujoco.MjData(model)
    synth = AudioSynth(model, RATE_HZ, np.random.default_rng(0), max_unread_s=1.0)
    for _ in range(1500):  # 3 s
        mujoco.mj_step(model, data)
        synth.observe(data, model.opt.timestep)
    assert synth.available == RATE_HZ
    assert synth.read_position_s == pytest.approx(2.0)
    assert synth.read(CHUNK).shape == (CHUNK,)
