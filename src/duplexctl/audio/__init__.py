"""The console's own audio: sound devices, echo cancellation, playout and the live status line.

- `devices`: list PortAudio devices, pick one by index or name (`NoAudioDevice` otherwise);
- `aec`: WebRTC echo cancellation (livekit's audio processing module) on 10 ms blocks;
- `streams`: the speaker (jitter buffer → device) and the microphone (device → 20 ms frames);
- `live`: one live conversation over the orchestrator's WebSocket (`duplexctl talk`);
- `status`: the status line and the transcript lines `talk` prints;
- `wavfile`: WAV in (any rate, converted) and out (48 kHz) for file conversations.

Nothing is imported here: `duplexctl --help` must not load numpy or PortAudio.
"""
