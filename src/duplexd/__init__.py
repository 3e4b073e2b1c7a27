"""duplex daemons: the TTS worker and the orchestrator."""

__version__ = "0.1.0"
