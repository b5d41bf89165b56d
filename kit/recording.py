"""A protocol's ``[recording.lsl]`` table: the LSL stream a live session records from (shared by the protocol
schema, which validates it, and the LSL rig, which reads it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LSLSource(BaseModel):
    """A protocol's ``[recording.lsl]`` table: the LSL stream a live session records from, as ``neurotwin rig lsl
    --protocol FILE`` reads it (its command-line options override each field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str | None = Field(None, description="The stream's name.")
    type: str | None = Field(None, description="The stream's type (e.g. fMRI, EEG, Spikes).")
    source_id: str | None = Field(None, description="The stream's source id (the one a restarted device keeps).")
    signal: Literal["volumes", "spike-counts"] | None = Field(
        None, description="What the stream carries: ROI values per volume, or spike counts per sample counted per "
        "window of one TR (default: volumes for sentences, spike-counts for images).")  # fmt: skip
    channels: list[str] | None = Field(None, min_length=1, description="Its channels, in order (default: target.rois).")
    rate: float | None = Field(None, gt=0, le=1e6, description="The nominal rate the stream must have (Hz).")

    @model_validator(mode="after")
    def _named(self) -> LSLSource:
        if not (self.name or self.type or self.source_id):
            raise ValueError("name the LSL stream: by its name, type or source_id")
        if self.channels is not None and len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must be distinct, got {self.channels}")
        return self
