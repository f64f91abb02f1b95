"""The settings every chat generator shares, and the chat messages built from them.

Each backend is one class selected by `_target_` in its yaml (`visa.generation.hf.HFTextGenerator`,
`visa.generation.hf.HFVisionGenerator`, `visa.generation.openai_api.OpenAIChatGenerator`, ...). The classes
are dataclasses that extend `ChatSettings` (text) or `MediaSettings` (text, images and videos) with their
own keys, so the config check (visa/config.py) compares a yaml's keys with exactly the keys of the backend
it names: a key that the backend does not take stops the run at start-up instead of being dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from visa.errors import VisaError
from visa.loading import short_name
from visa.prompts import Prompt


@dataclass(kw_only=True, eq=False)
class ChatSettings:
    """What a chat model is asked and how it samples: all of it changes the replies, so all of it is in
    `identity()` (the cache key of every generated text)."""

    generator: ClassVar[str]  # the backend's name in identities

    model: str  # hub id, local folder, or the name a server serves the model under
    batch_size: int = 16  # prompts per generate() call
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0  # used when sampling (temperature > 0)
    system_prompt: str | None = None
    # True: a text-only "Socratic" answerer that reads each item's description (Prompt.context) in place
    # of its pixels.
    uses_context: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise VisaError(
                f"batch_size={self.batch_size} and max_new_tokens={self.max_new_tokens} must be at least 1"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise VisaError(f"temperature={self.temperature} must be >= 0 and top_p={self.top_p} in (0, 1]")

    def identity(self) -> dict[str, Any]:
        """All that changes the replies (not where or how fast the model runs)."""
        return {
            "generator": self.generator,
            "model": short_name(self.model),
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "system_prompt": self.system_prompt,
            "uses_context": self.uses_context,
            "seed": self.seed if self.temperature > 0 else None,
        }

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def sees_media(self, prompt: Prompt) -> bool:
        """Whether the prompt's images or video go to the model (not when it reads descriptions)."""
        return bool(prompt.media) and not self.uses_context

    def user_text(self, prompt: Prompt) -> str:
        """The prompt's text; for a context reader, preceded by the item's description."""
        if not (prompt.media and self.uses_context):
            return prompt.text
        if not prompt.context:
            raise VisaError(
                f"uses_context: true but the prompt for {prompt.media[0]} has no description to read"
            )
        return f"Description of the {prompt.media_kind}: {prompt.context}\n\n{prompt.text}"

    def messages(
        self, prompt: Prompt, media_parts: list[dict] | None = None, typed: bool = False
    ) -> list[dict]:
        """Chat messages: the system prompt, then one user turn with the media parts first and the text
        last (so that the questions about one item share a prefix). `typed`: content as a list of typed
        parts, the system prompt too (what vision-language processors' chat templates expect)."""
        text = self.user_text(prompt)
        system: Any = [{"type": "text", "text": self.system_prompt}] if typed else self.system_prompt
        user: Any = [*(media_parts or []), {"type": "text", "text": text}] if media_parts or typed else text
        head = [{"role": "system", "content": system}] if self.system_prompt else []
        return [*head, {"role": "user", "content": user}]


VIDEO_MAX_PIXELS = 360 * 420  # per frame when max_pixels is not set: the method's video setting


@dataclass(kw_only=True, eq=False)
class MediaSettings(ChatSettings):
    """`ChatSettings` for models that see images and videos: a video goes as frames sampled at
    `video_fps` (at most `max_frames`), and every image or frame is scaled down to at most `max_pixels`
    pixels (None: images as they are, video frames at the method's 360x420)."""

    video_fps: float = 3.0
    max_frames: int = 64
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            self.video_fps <= 0
            or self.max_frames < 1
            or (self.max_pixels is not None and self.max_pixels < 1)
        ):
            raise VisaError(
                f"video_fps={self.video_fps} must be > 0, max_frames={self.max_frames} and "
                f"max_pixels={self.max_pixels} at least 1"
            )

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "video": {"fps": self.video_fps, "max_frames": self.max_frames},
            "max_pixels": self.max_pixels,
        }

    @property
    def frame_pixels(self) -> int:
        return self.max_pixels or VIDEO_MAX_PIXELS
