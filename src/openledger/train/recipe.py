"""``LoraRecipe``: everything that decides what a fine-tune learns, in one validated value.

A recipe is frozen, round-trips through YAML and JSON, and has a stable hash::

    recipe_hash = keccak256(UTF-8(JSON({"format": "openledger.lora_recipe/1", "recipe": fields})))

with ``fields`` the recipe's fields in JSON mode, keys sorted, separators ``","`` and ``":"``,
non-ASCII written as itself. Operational settings that do not change what is learnt
(checkpoint frequency, progress bars) are arguments of :func:`openledger.train.finetune`,
not recipe fields, so they do not change the hash.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from openledger.crypto import keccak256_hex
from openledger.exceptions import MissingDependencyError, RecipeError
from openledger.types import Hash32
from openledger.validation import describe_validation_error

__all__ = ["RECIPE_FORMAT", "LoraRecipe"]

RECIPE_FORMAT = "openledger.lora_recipe/1"
"""Format tag hashed with the recipe fields."""

Init = Literal["default", "gaussian", "pissa", "olora", "loftq"]
Quantization = Literal["4bit", "8bit"]
Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]
DType = Literal["float32", "bfloat16", "float16"]


class LoraRecipe(BaseModel):
    """A LoRA (or QLoRA) fine-tuning recipe.

    Example:
        >>> recipe = LoraRecipe(base_model="smollm2-135m-instruct", r=8, epochs=1)
        >>> LoraRecipe.from_yaml(recipe.to_yaml()) == recipe
        True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_model: str = Field(
        min_length=1, description="Folder, offline alias or hub id of the base model."
    )
    r: int = Field(default=8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator (lora_alpha).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] | Literal["all-linear"] = Field(
        default="all-linear",
        description="Module name suffixes to adapt, or 'all-linear' (every linear but the head).",
    )
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")
    init: Init = Field(default="default", description="Initialisation of the LoRA weights.")
    loraplus_lr_ratio: float | None = Field(
        default=None, gt=0, description="LoRA+: learning rate of B = ratio x that of A."
    )
    quantization: Quantization | None = Field(
        default=None, description="Load the base in 4bit/8bit (needs bitsandbytes and CUDA)."
    )
    dtype: DType | None = Field(
        default=None, description="Base weights dtype; default float32 on CPU, bfloat16 on CUDA."
    )
    learning_rate: float = Field(default=2e-4, gt=0, lt=1, description="Peak learning rate.")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Optimizer steps; overrides epochs when set."
    )
    batch_size: int = Field(default=4, ge=1, description="Examples per micro-batch.")
    gradient_accumulation: int = Field(default=1, ge=1, description="Micro-batches per step.")
    max_length: int = Field(default=512, ge=8, description="Longest example in tokens.")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Share of warm-up steps.")
    scheduler: Scheduler = Field(default="linear", description="Learning-rate schedule.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(default=0, ge=0, description="Seed for init, data order and eval split.")
    eval_split: float = Field(
        default=0.0, ge=0, lt=1, description="Share of records held out for evaluation."
    )
    eval_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N steps (default: once per epoch)."
    )
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="Stop after N evaluations without a better eval loss."
    )
    chat_template: str | None = Field(
        default=None, description="Jinja chat template replacing the tokenizer's own."
    )
    packing: bool = Field(default=False, description="Pack several examples per sequence.")

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise RecipeError(describe_validation_error(exc, "recipe", "LoraRecipe")) from None

    @field_validator("target_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            return (value,)
        if isinstance(value, (list, tuple)):
            if not value or not all(isinstance(v, str) and v for v in value):
                raise ValueError("give 'all-linear' or a non-empty list of module names")
            return tuple(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LoraRecipe:
        if self.early_stopping_patience is not None and self.eval_split == 0:
            raise ValueError(
                "early_stopping_patience needs eval_split > 0 (nothing to evaluate on)"
            )
        if self.init == "loftq" and self.quantization is not None:
            raise ValueError("init='loftq' replaces quantization; set quantization to null")
        if self.use_dora and self.init in ("pissa", "olora", "loftq"):
            raise ValueError(f"use_dora cannot be combined with init={self.init!r}")
        return self

    # -- construction with clear errors ------------------------------------------------

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> LoraRecipe:
        """Validate a mapping of fields.

        Raises:
            RecipeError: Naming the first offending field(s).
        """
        if not isinstance(fields, dict):
            raise RecipeError(f"a recipe must be a mapping of fields, got {type(fields).__name__}")
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise RecipeError(describe_validation_error(exc, "recipe", "LoraRecipe")) from None

    def replace(self, **changes: Any) -> LoraRecipe:
        """Return a validated copy with some fields changed.

        Raises:
            RecipeError: Naming the offending field.
        """
        return LoraRecipe.from_dict({**self.to_dict(), **changes})

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as plain JSON values (tuples become lists)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """Return the recipe as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> LoraRecipe:
        """Parse a recipe from JSON text.

        Raises:
            RecipeError: For malformed JSON or an invalid field.
        """
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"recipe is not valid JSON: {exc}") from None
        return cls.from_dict(fields)

    def to_yaml(self) -> str:
        """Return the recipe as YAML (needs PyYAML)."""
        yaml = _yaml()
        return str(yaml.safe_dump(self.to_dict(), sort_keys=True, allow_unicode=True))

    @classmethod
    def from_yaml(cls, text: str) -> LoraRecipe:
        """Parse a recipe from YAML text.

        Raises:
            RecipeError: For malformed YAML or an invalid field.
        """
        yaml = _yaml()
        try:
            fields = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe is not valid YAML: {exc}") from None
        return cls.from_dict(fields)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the recipe to ``.yaml``/``.yml`` or ``.json`` (chosen by the suffix)."""
        target = Path(path)
        text = self.to_json() if _is_json(target) else self.to_yaml()
        target.write_text(text + ("\n" if not text.endswith("\n") else ""), encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LoraRecipe:
        """Read a recipe from a ``.yaml``/``.yml`` or ``.json`` file.

        Raises:
            RecipeError: If the file is unreadable or the recipe invalid.
        """
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise RecipeError(f"cannot read recipe file {source}: {exc}") from None
        return cls.from_json(text) if _is_json(source) else cls.from_yaml(text)

    @property
    def hash(self) -> Hash32:
        """The stable recipe hash (see the module docstring for the encoding)."""
        body = {"format": RECIPE_FORMAT, "recipe": self.to_dict()}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return keccak256_hex(text.encode("utf-8"))


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def _yaml() -> Any:
    try:
        return importlib.import_module("yaml")
    except ImportError:
        raise MissingDependencyError(
            "YAML recipes need PyYAML: `pip install pyyaml` (or use JSON)"
        ) from None
