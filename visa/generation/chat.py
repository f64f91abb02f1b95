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

from visa.core.errors import VisaError
from visa.core.loading import short_name
from visa.core.prompt import Prompt
from visa.data.video import PAPER_MAX_PIXELS, VIDEO_MIN_PIXELS


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
    # None: what the model's own generation_config.json says (transformers) or the server's default;
    # docs/models.md says what the paper's runs used.
    repetition_penalty: float | None = None
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
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise VisaError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1.0: none)")

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
            # only when set: the identities (and caches) of generators that leave it alone stay as they were
            **(
                {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty is not None else {}
            ),
        }

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def sampling_of(self, prompt: Prompt) -> tuple[float, int]:
        """(temperature, seed) of one request: the prompt's own when it carries them (a question retry
        re-samples with a new seed), else the generator's."""
        return (
            self.temperature if prompt.temperature is None else prompt.temperature,
            self.seed if prompt.seed is None else prompt.seed,
        )

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


VIDEO_MAX_PIXELS = PAPER_MAX_PIXELS  # per frame when max_pixels is not set: the method's 360x420


@dataclass(kw_only=True, eq=False)
class MediaSettings(ChatSettings):
    """`ChatSettings` for models that see images and videos. A video goes as the frames Qwen2-VL's reference
    preprocessing takes (`visa.data.video.sample_fps`): `video_fps` frames a second over the whole clip, an
    even count between 4 and min(768, the clip's frames), each frame resized to sides that are multiples of
    28 and an area between `video_min_pixels` and `max_pixels` (None: the method's 360x420). `max_frames`
    caps the count for memory: clips longer than max_frames / video_fps seconds then get fewer frames a
    second than asked, still spread over the whole clip (None: no cap beyond the 768 of qwen_vl_utils).
    Images are scaled down to at most `max_pixels` when it is set, else go as they are (the model's
    processor resizes them)."""

    video_fps: float = 3.0
    max_frames: int | None = None
    max_pixels: int | None = None
    video_min_pixels: int = VIDEO_MIN_PIXELS

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            self.video_fps <= 0
            or (self.max_frames is not None and self.max_frames < 2)
            or (self.max_pixels is not None and self.max_pixels < 1)
            or self.video_min_pixels < 1
        ):
            raise VisaError(
                f"video_fps={self.video_fps} must be > 0, max_frames={self.max_frames} at least 2 (or null), "
                f"max_pixels={self.max_pixels} and video_min_pixels={self.video_min_pixels} at least 1"
            )

    def identity(self) -> dict[str, Any]:
        video: dict[str, Any] = {"fps": self.video_fps, "max_frames": self.max_frames}
        video.update(frames="qwen_vl_utils", min_pixels=self.video_min_pixels)
        return {**super().identity(), "video": video, "max_pixels": self.max_pixels}

    @property
    def frame_pixels(self) -> int:
        return self.max_pixels or VIDEO_MAX_PIXELS
