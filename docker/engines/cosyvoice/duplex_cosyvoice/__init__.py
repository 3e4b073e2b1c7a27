"""CosyVoice 2 for duplexd workers: see `duplex_cosyvoice.adapter`."""
