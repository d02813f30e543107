"""S.Rocks.Music API: text-to-music generation with MusicGen on CPU."""

__version__ = "1.0.0"
