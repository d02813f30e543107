"""Clips longer than the model's context, made in overlapping windows as audiocraft extends them.

MusicGen was trained on 30 s clips. Past that, audiocraft (``BaseGenModel._generate_tokens`` with
``extend_stride``) generates in windows of 30 s: each new window starts ``extend_stride`` seconds
after the previous one, and the previous window's codes over their overlap are the new window's
prompt, so the music continues rather than restarting. We keep audiocraft's default stride, 18 s:

* a 12 s overlap gives each window as much of the music so far as it gives new music: enough
  bars for tempo, key and instrumentation to carry over (audiocraft's own choice, with which
  its long samples are made);
* with the overlap prefilled in batched steps (``MusicgenModel``), it costs a small fraction of
  the 18 s decoded after it, so a longer overlap buys continuity cheaply; a shorter stride would
  multiply the windows, each re-reading its prompt, for little more context.

Clips of up to one window (30 s) are one window, exactly as before.
"""

from dataclasses import dataclass

WINDOW_SECONDS = 30
"""The longest stretch the model attends over: the clip length it was trained on."""
EXTEND_STRIDE_SECONDS = 18
"""How far each window starts after the previous one (audiocraft's default ``extend_stride``)."""


@dataclass(frozen=True)
class Window:
    """One window of a clip, in code frames: it covers ``start`` to ``end``, and its first
    ``prompt`` frames are the previous window's last ones, given rather than generated."""

    start: int
    frames: int
    prompt: int

    @property
    def end(self) -> int:
        return self.start + self.frames

    def decode_steps(self, num_codebooks: int) -> int:
        """Decode steps this window runs after its prompt: one per new frame, plus the delay pattern."""
        return self.frames - self.prompt + num_codebooks - 1


@dataclass(frozen=True)
class WindowShape:
    """How long each window is and how much of it overlaps the previous one, in code frames."""

    frames: int
    overlap: int

    @classmethod
    def for_model(cls, frame_rate: int, max_positions: int, num_codebooks: int) -> "WindowShape":
        """`WINDOW_SECONDS` windows striding `EXTEND_STRIDE_SECONDS`, shortened (overlap in
        proportion) where the model's position table holds fewer frames plus the delay pattern."""
        frames = min(WINDOW_SECONDS * frame_rate, max_positions - num_codebooks)
        overlap = frames * (WINDOW_SECONDS - EXTEND_STRIDE_SECONDS) // WINDOW_SECONDS
        return cls(frames, overlap)

    def plan(self, total_frames: int) -> list[Window]:
        """The windows of a clip of `total_frames`: together they cover it exactly."""
        if total_frames < 1:
            raise ValueError("a clip has at least one frame")
        windows = [Window(0, min(total_frames, self.frames), 0)]
        while windows[-1].end < total_frames:
            start = windows[-1].end - self.overlap
            windows.append(Window(start, min(total_frames - start, self.frames), self.overlap))
        return windows

    def decode_steps(self, total_frames: int, num_codebooks: int) -> int:
        """Decode steps of a whole clip of `total_frames`, window after window."""
        return sum(window.decode_steps(num_codebooks) for window in self.plan(total_frames))

    def prompt_frames(self, total_frames: int) -> int:
        """Frames prefilled as prompts over a whole clip of `total_frames`."""
        return sum(window.prompt for window in self.plan(total_frames))
