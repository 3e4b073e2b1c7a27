"""Finding sound devices through PortAudio (sounddevice): list them, pick one by index or name.

Every way of not having a device — no PortAudio library, no device at all, an index or name
that matches nothing, a device that refuses 48 kHz — ends in `NoAudioDevice` (exit 9) with a
hint, never in a PortAudio traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from duplexd.errors import NoAudioDevice

__all__ = ["Device", "Kind", "list_devices", "resolve_device", "sounddevice"]

Kind = Literal["input", "output"]
LIST_HINT = "see the devices: `duplexctl talk --list-devices`"


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool = False
    is_default_output: bool = False

    def channels(self, kind: Kind) -> int:
        return self.max_input_channels if kind == "input" else self.max_output_channels


def sounddevice() -> ModuleType:
    """The sounddevice module; its import loads PortAudio, which may be missing."""
    try:
        import sounddevice as sd
    except OSError as exc:
        raise NoAudioDevice(
            f"PortAudio is not available: {exc}",
            hint="install it (Debian/Ubuntu: apt-get install libportaudio2)",
        ) from None
    module: ModuleType = sd
    return module


def list_devices() -> list[Device]:
    sd = sounddevice()
    hostapis = sd.query_hostapis()
    default_in, default_out = _defaults(sd)
    return [
        Device(
            index=i,
            name=str(d["name"]),
            hostapi=str(hostapis[d["hostapi"]]["name"]),
            max_input_channels=int(d["max_input_channels"]),
            max_output_channels=int(d["max_output_channels"]),
            default_samplerate=float(d["default_samplerate"]),
            is_default_input=i == default_in,
            is_default_output=i == default_out,
        )
        for i, d in enumerate(sd.query_devices())
    ]


def resolve_device(spec: str | None, kind: Kind) -> Device:
    """The device for `spec`: None = the system default, digits = an index, else the first
    device whose name contains `spec` (case-insensitive) and has channels of `kind`."""
    devices = [d for d in list_devices() if d.channels(kind) > 0]
    if spec is None or spec == "":
        found = next((d for d in devices if _is_default(d, kind)), None)
        if found is None:
            found = devices[0] if devices else None
        if found is None:
            raise NoAudioDevice(f"no audio {kind} device found", hint=_no_device_hint(kind))
        return found
    if spec.isdigit():
        found = next((d for d in devices if d.index == int(spec)), None)
    else:
        found = next((d for d in devices if spec.lower() in d.name.lower()), None)
    if found is None:
        raise NoAudioDevice(f"no audio {kind} device matches {spec!r}", hint=LIST_HINT)
    return found


def _defaults(sd: ModuleType) -> tuple[int, int]:
    default = sd.default.device
    return int(default[0]), int(default[1])


def _is_default(device: Device, kind: Kind) -> bool:
    return device.is_default_input if kind == "input" else device.is_default_output


def _no_device_hint(kind: Kind) -> str:
    if kind == "input":
        return (
            "connect a microphone and allow this terminal to use it, or type instead: "
            "`duplexctl talk --text`, or use a file: `duplexctl talk --input q.wav --output a.wav`"
        )
    return "connect speakers or headphones, or write a file: `--input q.wav --output a.wav`"
