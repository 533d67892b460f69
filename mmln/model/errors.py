"""Errors a user can act on without reading a traceback."""
from __future__ import annotations


class MissingWeightsError(FileNotFoundError):
    """A configured weights directory is missing or incomplete."""

    def __init__(self, key: str, path: str | None, needs: str):
        self.key, self.path = key, path
        where = f"'{path}' does not exist or is incomplete" if path else "it is not set"
        super().__init__(
            f"{key}: {where}. Set {key}=/local/dir (in the YAML or as an override); the directory must "
            f"contain {needs}. Nothing is downloaded: weights are read from local paths only."
        )

    @classmethod
    def from_problems(cls, problems: list[str]) -> "MissingWeightsError":
        err = cls.__new__(cls)
        FileNotFoundError.__init__(err, "missing inputs (nothing is downloaded; set the keys below):\n  - "
                                   + "\n  - ".join(problems))
        err.key, err.path = None, None
        return err


class WeightsMismatchError(MissingWeightsError):
    """The weights at a configured path do not fill the model that was built (or were not all used)."""

    def __init__(self, message: str, key: str, path: str | None):
        FileNotFoundError.__init__(self, message)
        self.key, self.path = key, path


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: damaged, of the wrong kind, or needing code to load."""
