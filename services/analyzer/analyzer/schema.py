"""What the VLM is asked for, and the shape its answer must have."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TAGS = 15

PROMPT = """You are cataloguing a personal media library. Describe this image for search and
filing. Answer in JSON that follows the response schema exactly:
- tags: up to 15 short lowercase keywords, most important first;
- primary_category: one or two words naming what kind of image this is;
- description: one or two plain sentences;
- objects: the distinct things you can see;
- scene_type: for example indoor, outdoor, studio, screenshot, document, nature, urban;
- colour_palette: up to 5 dominant colours as simple names;
- visible_text: all text you can read in the image, or an empty string;
- suggested_cluster_name: a short folder name (2-4 words) for images like this one."""


def _short(value: str, limit: int) -> str:
    return " ".join(value.split())[:limit]


class VlmAnalysis(BaseModel):
    """The VLM's structured answer (also the response schema sent with the request)."""

    model_config = ConfigDict(extra="ignore")

    tags: list[str] = Field(max_length=100)
    primary_category: str = Field(min_length=1)
    description: str
    objects: list[str] = Field(default_factory=list, max_length=200)
    scene_type: str = ""
    colour_palette: list[str] = Field(default_factory=list, max_length=50)
    visible_text: str = ""
    suggested_cluster_name: str = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        # Up to 15, deduplicated, as short lowercase keywords.
        cleaned = dict.fromkeys(_short(t, 60).lower() for t in tags if t.strip())
        return list(cleaned)[:MAX_TAGS]

    @field_validator("primary_category", "suggested_cluster_name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = _short(value, 200)
        if not value:
            raise ValueError("must not be blank")
        return value

    def stored(self, model: str) -> dict[str, Any]:
        """The analysis as stored on the content (`analysis` column)."""
        return {**self.model_dump(), "source": "vlm", "model": model}
