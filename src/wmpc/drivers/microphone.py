"""Microphone capture without ROS: PortAudio (sounddevice) or real-time replay of a WAV file.

Both sources hand `sink` AudioChunk objects of `chunk_samples` int16 samples per channel,
stamped with the capture time of their first sample on `clock`:

- live: PortAudio reports when the first sample of each buffer hit the ADC, on its own
  stream clock; the chunk's age is (stream now - ADC time), subtracted from `clock()` now.
  Overruns are PortAudio's input-overflow flags; dropouts are gaps in the ADC times.
- file: the recording is resampled to `rate_hz` once, then chunk i is released when its last
  sample would have been captured, stamped start + i * chunk duration, as a live device
  would. An overrun here is the replay thread waking more than one chunk late.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wmpc.config import ConfigError, MicrophoneConfig
from wmpc.types import AudioChunk

log = logging.getLogger(__name__)

# Chunks waiting for the publisher thread; beyond this the consumer is stuck and we drop.
QUEUE_CHUNKS = 64


class MicrophoneError(ConfigError):
    """The microphone (or its WAV stand-in) cannot be used as configured."""


# ---- WAV files ---------------------------------------------------------------------------


def load_wav(path: str | Path, rate_hz: int, channels: int) -> np.ndarray:
    """A WAV file as (channels, n) int16 at `rate_hz`, downmixed to mono when channels = 1."""
    import soundfile
    from scipy.signal import resample_poly

    path = Path(path)
    try:
        audio, file_rate_hz = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise MicrophoneError(f"parameter 'file' = '{path}': cannot read audio: {exc}") from None
    file_channels = audio.shape[1]  # audio: (n, file_channels)
    if file_channels != channels:
        if channels != 1:
            raise MicrophoneError(
                f"parameter 'channels' = {channels} but '{path}' has {file_channels} "
                f"channel(s); set 'channels' to {file_channels}, or to 1 to downmix"
            )
        audio = audio.mean(axis=1, keepdims=True)
    if audio.shape[0] == 0:
        raise MicrophoneError(f"parameter 'file' = '{path}': the file holds no samples")
    if file_rate_hz != rate_hz:
        divisor = math.gcd(int(file_rate_hz), int(rate_hz))
        # Polyphase resampling applies its own anti-aliasing filter (e.g. 44.1 -> 16 kHz).
        audio = resample_poly(audio, rate_hz // divisor, int(file_rate_hz) // divisor, axis=0)
    samples = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    return np.ascontiguousarray(samples.T)  # (channels, n)


# ---- PortAudio ---------------------------------------------------------------------------


def import_sounddevice(device: str = ""):
    """The sounddevice module; MicrophoneError naming the fix when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:
        raise MicrophoneError(
            f"parameter 'device' = '{device or 'default'}': capturing needs the PortAudio "
            f"library, which sounddevice cannot load ({exc}), so no input device can be "
            "listed; install it (Debian/Ubuntu: sudo apt install libportaudio2), or set "
            "parameter 'file' to replay a WAV recording instead"
        ) from None
    return sounddevice


def describe_inputs(devices: list[dict[str, Any]]) -> str:
    """One line listing the input devices of sounddevice.query_devices()."""
    inputs = [d for d in devices if d.get("max_input_channels", 0) > 0]
    if not inputs:
        return (
            "none (no sound card found; is one connected, and is this user in the 'audio' group?)"
        )
    return ", ".join(
        f"[{d['index']}] '{d['name']}' ({d['max_input_channels']} ch, "
        f"{d['default_samplerate']:.0f} Hz)"
        for d in inputs
    )


def resolve_input_device(device: str, channels: int, devices: list[dict[str, Any]]) -> int | None:
    """The PortAudio index for parameter 'device' (None = default input); errors list inputs.

    `device` is an index or a case-insensitive part of the device name.
    """
    inputs = [d for d in devices if d.get("max_input_channels", 0) > 0]
    listing = describe_inputs(devices)
    if not inputs:
        raise MicrophoneError(
            f"parameter 'device' = '{device or 'default'}': no audio input device exists; "
            f"available input devices: {listing}"
        )
    if not device:
        return None
    if device.strip().isdigit():
        matches = [d for d in inputs if d["index"] == int(device)]
    else:
        matches = [d for d in inputs if device.lower() in str(d["name"]).lower()]
    if not matches:
        raise MicrophoneError(
            f"parameter 'device' = '{device}': no input device matches; "
            f"available input devices: {listing}"
        )
    if len(matches) > 1:
        names = ", ".join(f"[{d['index']}] '{d['name']}'" for d in matches)
        raise MicrophoneError(
            f"parameter 'device' = '{device}' matches several input devices ({names}); "
            "give its index or a longer part of its name"
        )
    chosen = matches[0]
    if channels > chosen["max_input_channels"]:
        raise MicrophoneError(
            f"parameter 'channels' = {channels} but input device [{chosen['index']}] "
            f"'{chosen['name']}' has {chosen['max_input_channels']}"
        )
    return int(chosen["index"])


# ---- the driver --------------------------------------------------------------------------


class MicrophoneDriver:
    """Captures (or replays) audio on its own threads and hands chunks to `sink`.

    Construction checks the source (device or file) and raises MicrophoneError naming the
    parameter; `start()` begins streaming. `sink` is called from a driver thread.
    """

    def __init__(
        self,
        config: MicrophoneConfig,
        sink: Callable[[AudioChunk], None],
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self._sink = sink
        self._clock = clock
        self.published = 0
        self.overruns = 0
        self.dropouts = 0
        self.dropped_samples = 0
        self.sink_errors = 0
        self.finished = False  # a non-looping file reached its end
        self.failure = ""  # why a live stream stopped, if it did
        self.stamp_source = "file schedule" if config.file else "PortAudio ADC time"
        self._last_adc_s: float | None = None
        self._last_chunk_mono: float | None = None
        self._started_mono = time.monotonic()
        self._health_mark = (time.monotonic(), 0, 0)
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._stream = None
        self.samples: np.ndarray | None = None  # (channels, n) int16, file source only
        self.replay_start_s: float | None = None  # stamp of the file's first sample
        if config.file:
            self.samples = load_wav(config.file, config.rate_hz, config.channels)
            self._thread = threading.Thread(target=self._replay, name="wav_replay", daemon=True)
        else:
            self._sd = import_sounddevice(config.device)
            devices = [dict(d) for d in self._sd.query_devices()]
            self._device_index = resolve_input_device(config.device, config.channels, devices)
            self._thread = threading.Thread(target=self._drain, name="mic_publish", daemon=True)

    @property
    def source(self) -> str:
        """What is being captured, for logs and diagnostics."""
        if self.config.file:
            return f"file {self.config.file}"
        return f"device {self.config.device or 'default'}"

    def start(self) -> None:
        """Open the stream (live) and start the driver thread."""
        self._started_mono = time.monotonic()
        if not self.config.file:
            try:
                self._stream = self._sd.InputStream(
                    samplerate=self.config.rate_hz,
                    blocksize=self.config.chunk_samples,
                    device=self._device_index,
                    channels=self.config.channels,
                    dtype="int16",
                    callback=self._callback,
                    finished_callback=self._stream_finished,
                )
                self._stream.start()
            except self._sd.PortAudioError as exc:
                raise MicrophoneError(
                    f"parameter 'device' = '{self.config.device or 'default'}': cannot open "
                    f"a {self.config.channels}-channel {self.config.rate_hz} Hz input stream: "
                    f"{exc}"
                ) from None
        self._thread.start()

    def stop(self) -> None:
        """Stop capturing and join the driver thread."""
        self._stop.set()
        if self._stream is not None:
            self._stream.abort()
            self._stream.close()
            self._stream = None
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _emit(self, chunk: AudioChunk) -> None:
        try:
            self._sink(chunk)
        except Exception:  # the driver must outlive a failing consumer
            self.sink_errors += 1
            log.exception("audio chunk consumer failed")
            return
        self.published += 1
        self._last_chunk_mono = time.monotonic()

    # ---- file source -----------------------------------------------------------------------

    def _replay(self) -> None:
        samples = self.samples  # (channels, n)
        chunk = self.config.chunk_samples
        rate_hz = self.config.rate_hz
        period_s = chunk / rate_hz
        n = samples.shape[1]
        start_stamp_s = self.replay_start_s = self._clock()
        start_mono = time.monotonic()
        i = 0
        while not self._stop.is_set():
            first = i * chunk
            if first >= n and not self.config.loop:
                self.finished = True
                log.info("finished replaying %s", self.config.file)
                return
            # Release chunk i when its last sample would have been captured.
            wait_s = start_mono + (i + 1) * period_s - time.monotonic()
            if wait_s > 0:
                if self._stop.wait(wait_s):
                    return
            elif -wait_s > period_s:
                self.overruns += 1
            if self.config.loop:
                data = samples[:, np.arange(first, first + chunk) % n]
            else:
                data = samples[:, first : first + chunk]
                if data.shape[1] < chunk:  # the tail is padded with silence to a full chunk
                    pad = np.zeros((samples.shape[0], chunk - data.shape[1]), np.int16)
                    data = np.concatenate([data, pad], axis=1)
            stamp_s = start_stamp_s + i * period_s
            self._emit(AudioChunk(stamp_s, data.copy(), rate_hz, self.config.frame_id))
            i += 1

    # ---- live source -----------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's callback: stamp and queue, nothing slow (it runs on the audio thread)."""
        now_s = self._clock()
        if status.input_overflow:
            self.overruns += 1
        chunk_s = frames / self.config.rate_hz
        adc_s = time_info.inputBufferAdcTime
        if adc_s > 0 and time_info.currentTime > 0:
            age_s = time_info.currentTime - adc_s
            if self._last_adc_s is not None:
                gap_s = adc_s - self._last_adc_s - chunk_s
                if gap_s > 0.5 * chunk_s:
                    self.dropouts += 1
                    self.dropped_samples += round(gap_s * self.config.rate_hz)
            self._last_adc_s = adc_s
        else:
            # Some host APIs report no ADC time: assume the buffer was just filled.
            if self.stamp_source != "callback time":
                self.stamp_source = "callback time"
                log.warning("audio host API reports no ADC time; stamping by callback time")
            age_s = chunk_s
        samples = indata.T.copy()  # (frames, channels) -> (channels, frames)
        chunk = AudioChunk(now_s - age_s, samples, self.config.rate_hz, self.config.frame_id)
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:
            self.dropouts += 1
            self.dropped_samples += frames

    def _stream_finished(self) -> None:
        if not self._stop.is_set():
            self.failure = "the input stream stopped (device unplugged?)"
            log.error("microphone %s: %s", self.source, self.failure)

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self._emit(chunk)

    # ---- reporting -------------------------------------------------------------------------

    def health(self) -> tuple[str, str, dict[str, str]]:
        """(level 'OK'/'WARN'/'ERROR', message, counters) for diagnostics."""
        now = time.monotonic()
        mark_time, mark_published, mark_losses = self._health_mark
        losses = self.overruns + self.dropouts
        self._health_mark = (now, self.published, losses)
        rate = (self.published - mark_published) / max(now - mark_time, 1e-9)
        values = {
            "source": self.source,
            "rate_hz": str(self.config.rate_hz),
            "channels": str(self.config.channels),
            "chunk_samples": str(self.config.chunk_samples),
            "chunks_per_s": f"{rate:.1f}",
            "published": str(self.published),
            "overruns": str(self.overruns),
            "dropouts": str(self.dropouts),
            "dropped_samples": str(self.dropped_samples),
            "sink_errors": str(self.sink_errors),
            "stamp_source": self.stamp_source,
        }
        if self.failure:
            return "ERROR", self.failure, values
        if self.finished:
            return "OK", f"finished replaying {self.config.file}", values
        if self._stop.is_set():
            return "WARN", "driver stopped", values
        last = self._last_chunk_mono if self._last_chunk_mono is not None else self._started_mono
        if now - last > self.config.stale_after_s:
            return "WARN", f"no audio for {now - last:.1f} s", values
        if losses > mark_losses:
            window_s = now - mark_time
            message = f"{losses - mark_losses} overrun(s)/dropout(s) in the last {window_s:.1f} s"
            return "WARN", message, values
        if self.stamp_source == "callback time":
            return "WARN", "stamps from callback time: host API gives no ADC time", values
        return "OK", "streaming", values
