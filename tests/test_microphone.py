"""The microphone driver: real WAV recordings replayed in real time, and the PortAudio errors.

This machine has no sound card (and no PortAudio library), so live capture is tested only for
the error it gives when no input device exists; everything else runs on the CC0 impact
recordings in ../shared/testdata/external/audio through the file source.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from conftest import RosHarness
from wmpc.config import ConfigError, MicrophoneConfig, build_config
from wmpc.drivers.microphone import (
    MicrophoneDriver,
    MicrophoneError,
    import_sounddevice,
    load_wav,
    resolve_input_device,
)

wait_for = RosHarness.wait_until  # poll until true, fail the test naming what


@pytest.fixture
def snare(external_data):
    return external_data / "audio" / "drum_snare_hard.wav"  # 44.1 kHz mono


@pytest.fixture
def snap(external_data):
    return external_data / "audio" / "perc_snap.wav"  # 48 kHz stereo


# ---- WAV loading -----------------------------------------------------------------------------


def test_load_wav_resamples_44k1_mono_and_keeps_the_impact_where_it_was(snare):
    raw, raw_rate = soundfile.read(str(snare), dtype="float32")
    samples = load_wav(snare, 16000, 1)
    assert samples.dtype == np.int16 and samples.shape[0] == 1
    assert samples.shape[1] == math.ceil(len(raw) * 16000 / raw_rate)
    # the loudest moment stays at the same time (to within a couple of output samples)
    t_raw = np.argmax(np.abs(raw)) / raw_rate
    t_out = np.argmax(np.abs(samples[0].astype(np.float64))) / 16000
    assert abs(t_raw - t_out) < 2e-3
    # a snare has most energy below 8 kHz: the level survives the anti-aliasing filter
    rms_raw = np.sqrt(np.mean(raw.astype(np.float64) ** 2))
    rms_out = np.sqrt(np.mean((samples[0] / 32767.0) ** 2))
    assert 0.8 < rms_out / rms_raw < 1.1


def test_load_wav_downmixes_or_keeps_stereo(snap):
    raw, raw_rate = soundfile.read(str(snap), dtype="float32", always_2d=True)
    assert raw.shape[1] == 2 and raw_rate == 48000
    mono = load_wav(snap, 16000, 1)
    expected = np.clip(resample_poly(raw.mean(axis=1), 1, 3), -1.0, 1.0)  # it peaks at full scale
    np.testing.assert_allclose(mono[0] / 32767.0, expected, atol=2.0 / 32767)
    stereo = load_wav(snap, 16000, 2)
    assert stereo.shape == (2, mono.shape[1])
    assert not np.array_equal(stereo[0], stereo[1])  # really two channels
    with pytest.raises(MicrophoneError, match=r"'channels' = 3.*2 channel"):
        load_wav(snap, 16000, 3)


def test_load_wav_rejects_a_file_that_is_not_audio(tmp_path):
    bad = tmp_path / "not_audio.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(MicrophoneError, match=r"not_audio.wav"):
        load_wav(bad, 16000, 1)


def test_missing_file_is_a_parameter_error(tmp_path):
    with pytest.raises(ConfigError, match=r"'file'.*not found"):
        build_config(MicrophoneConfig, {"file": str(tmp_path / "none.wav")})


# ---- real-time replay ------------------------------------------------------------------------


def test_replay_streams_the_whole_recording_in_real_time_with_capture_stamps(snare):
    chunks = []
    config = build_config(MicrophoneConfig, {"file": str(snare)})
    driver = MicrophoneDriver(config, chunks.append)
    expected = driver.samples
    started = time.time()
    driver.start()
    try:
        wait_for(lambda: driver.finished, 5.0, "the end of the recording")
    finally:
        driver.stop()
    n_chunks = math.ceil(expected.shape[1] / 512)
    assert len(chunks) == n_chunks
    assert all(c.samples.shape == (1, 512) and c.samples.dtype == np.int16 for c in chunks)
    assert all(c.rate_hz == 16000 and c.frame_id == "microphone" for c in chunks)
    joined = np.concatenate([c.samples for c in chunks], axis=1)
    np.testing.assert_array_equal(joined[:, : expected.shape[1]], expected)
    assert not joined[:, expected.shape[1] :].any()  # the tail is padded with silence
    stamps = np.array([c.stamp_s for c in chunks])
    # float64 seconds since 1970 resolve ~0.2 us
    np.testing.assert_allclose(np.diff(stamps), 512 / 16000, atol=1e-6)
    assert started - 0.5 < stamps[0] < started + 0.5
    level, message, values = driver.health()
    assert level == "OK" and "finished" in message
    assert values["published"] == str(n_chunks)


def test_replay_loops_seamlessly_and_keeps_stereo(snap):
    chunks = []
    config = build_config(
        MicrophoneConfig,
        {"file": str(snap), "channels": 2, "loop": True, "chunk_samples": 1024},
    )
    driver = MicrophoneDriver(config, chunks.append)
    n = driver.samples.shape[1]
    needed = math.ceil(n / 1024) + 2  # past the end of the recording, into the second pass
    driver.start()
    try:
        wait_for(lambda: len(chunks) >= needed, 5.0, f"{needed} chunks")
    finally:
        driver.stop()
    joined = np.concatenate([c.samples for c in chunks[:needed]], axis=1)
    assert joined.shape[0] == 2
    np.testing.assert_array_equal(joined, driver.samples[:, np.arange(needed * 1024) % n])
    assert not driver.finished


def test_a_stalled_consumer_shows_up_as_overruns(snare):
    release = threading.Event()
    chunks = []

    def stalling_sink(chunk):
        if not chunks:
            release.wait(5.0)  # hold the replay thread for several chunk periods
        chunks.append(chunk)

    config = build_config(MicrophoneConfig, {"file": str(snare), "chunk_samples": 256})
    driver = MicrophoneDriver(config, stalling_sink)
    driver.start()
    try:
        time.sleep(0.1)  # > 3 chunks of 16 ms
        release.set()
        wait_for(lambda: driver.finished, 5.0, "the end of the recording")
    finally:
        driver.stop()
    assert driver.overruns >= 1
    # late chunks still carry the time they were captured, not the time they went out
    stamps = np.array([c.stamp_s for c in chunks])
    np.testing.assert_allclose(np.diff(stamps), 256 / 16000, atol=1e-6)


# ---- live capture: only its errors can be tested here --------------------------------------


def test_no_sound_card_gives_a_clear_error_naming_the_device():
    """On this machine either PortAudio itself is missing or it finds no input device."""
    config = build_config(MicrophoneConfig, {"device": "USB Audio CODEC"})
    with pytest.raises(MicrophoneError) as raised:
        MicrophoneDriver(config, lambda chunk: None)
    message = str(raised.value)
    try:
        import_sounddevice()
    except MicrophoneError:
        assert "'device' = 'USB Audio CODEC'" in message
        assert "PortAudio" in message and "libportaudio2" in message and "'file'" in message
    else:
        assert "'device' = 'USB Audio CODEC'" in message
        assert "available input devices" in message


# The lists below have the shape sounddevice.query_devices() returns (plain dicts); they stand
# in for sound cards this machine does not have.
CARD = {"index": 0, "name": "HDA Intel PCH: ALC257 Analog (hw:0,0)", "max_input_channels": 2,
        "default_samplerate": 48000.0}  # fmt: skip
HDMI = {"index": 1, "name": "HDA Intel PCH: HDMI 0 (hw:0,3)", "max_input_channels": 0,
        "default_samplerate": 44100.0}  # fmt: skip
USB = {"index": 2, "name": "USB Audio CODEC: Audio (hw:1,0)", "max_input_channels": 1,
       "default_samplerate": 16000.0}  # fmt: skip


def test_resolve_input_device_by_name_index_or_default():
    devices = [CARD, HDMI, USB]
    assert resolve_input_device("usb audio", 1, devices) == 2
    assert resolve_input_device("0", 2, devices) == 0
    assert resolve_input_device("", 1, devices) is None


def test_resolve_input_device_errors_list_what_exists():
    devices = [CARD, HDMI, USB]
    with pytest.raises(MicrophoneError) as raised:
        resolve_input_device("Blue Yeti", 1, devices)
    message = str(raised.value)
    assert "'Blue Yeti'" in message and "ALC257" in message and "USB Audio CODEC" in message
    assert "HDMI" not in message  # not an input
    with pytest.raises(MicrophoneError, match="several"):
        resolve_input_device("HDA Intel", 1, [*devices, dict(CARD, index=3)])
    with pytest.raises(MicrophoneError, match=r"'channels' = 2.*has 1"):
        resolve_input_device("USB", 2, devices)
    with pytest.raises(MicrophoneError, match=r"no audio input device exists.*'audio' group"):
        resolve_input_device("", 1, [HDMI])
