"""Record schemas: a frozen pydantic ``Record`` base and the built-in record kinds.

Every schema has a ``schema_id`` (``"<name>/<version>"``) that is part of each record's
canonical encoding, so equal fields under different schemas never hash alike. Subclass
:class:`Record` for your own kind; a subclass without an explicit ``schema_id`` gets
``"<module>.<ClassName>/1"``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from openledger.crypto import keccak256_hex
from openledger.exceptions import SchemaError
from openledger.types import Hash32

__all__ = [
    "BUILTIN_SCHEMAS",
    "ChatMessage",
    "ChatRecord",
    "ClassificationRecord",
    "InstructionRecord",
    "Record",
    "TextRecord",
    "resolve_schema",
    "schema_hash",
    "schema_ref",
    "validate_record",
]


class Record(BaseModel):
    """Base class of every datanet record: frozen, strict about unknown fields.

    Attributes:
        schema_id: Stable name and version of the schema, part of the record hash.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)
    schema_id: ClassVar[str] = "openledger.record/1"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "schema_id" not in cls.__dict__:
            cls.schema_id = f"{cls.__module__}.{cls.__qualname__}/1"


class TextRecord(Record):
    """Plain text, e.g. for continued pre-training."""

    schema_id: ClassVar[str] = "openledger.text/1"
    text: str = Field(min_length=1, description="The text.")


class InstructionRecord(Record):
    """An instruction, an optional input, and the desired response (alpaca style)."""

    schema_id: ClassVar[str] = "openledger.instruction/1"
    instruction: str = Field(min_length=1, description="What the model is asked to do.")
    input: str | None = Field(default=None, description="Optional context for the task.")
    response: str = Field(min_length=1, description="The desired answer.")


class ChatMessage(BaseModel):
    """One OpenAI-style chat message."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRecord(Record):
    """A conversation as OpenAI-style messages; at least one must be from the assistant."""

    schema_id: ClassVar[str] = "openledger.chat/1"
    messages: tuple[ChatMessage, ...] = Field(min_length=1, description="The conversation.")

    def model_post_init(self, context: Any, /) -> None:
        if not any(m.role == "assistant" for m in self.messages):
            raise ValueError("messages must contain at least one 'assistant' message to learn from")


class ClassificationRecord(Record):
    """A text and its label."""

    schema_id: ClassVar[str] = "openledger.classification/1"
    text: str = Field(min_length=1, description="The text to classify.")
    label: str = Field(min_length=1, description="Its class.")


BUILTIN_SCHEMAS: dict[str, type[Record]] = {
    s.schema_id: s for s in (TextRecord, InstructionRecord, ChatRecord, ClassificationRecord)
}
"""Built-in schemas by ``schema_id``."""


def schema_ref(schema: type[Record]) -> str:
    """Return the import path ``"module:QualName"`` used to find ``schema`` again on open."""
    return f"{schema.__module__}:{schema.__qualname__}"


def schema_hash(schema: type[Record]) -> Hash32:
    """Return keccak256 of the schema id and its JSON Schema in canonical JSON.

    A datanet stores it at creation and refuses to open with a schema whose fields changed.
    """
    body = {"schema_id": schema.schema_id, "json_schema": schema.model_json_schema()}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return keccak256_hex(text.encode("utf-8"))


def resolve_schema(schema_id: str, ref: str, allow_modules: Sequence[str] = ()) -> type[Record]:
    """Find a schema class from its id (built-ins) or its import path (user subclasses).

    The import path comes from the datanet's file, which whoever can write the folder
    controls, and importing a module runs its code. So only modules the caller names in
    ``allow_modules`` (exactly, or a package above them) are imported.

    Raises:
        SchemaError: If the module is not allowed or the class cannot be imported; pass
            ``schema=`` or ``allow_modules=`` to ``Datanet.open``.
    """
    if schema_id in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[schema_id]
    module_name, _, qualname = ref.partition(":")
    if not _allowed(module_name, allow_modules):
        raise SchemaError(
            f"schema {schema_id!r} names the module {module_name!r}, which is not allowed: "
            "a datanet file never chooses code to import; pass schema=YourRecord, or "
            f"allow_modules=[{module_name!r}] if you trust it, to Datanet.open"
        )
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        raise SchemaError(
            f"schema {schema_id!r} ({ref}) cannot be imported; pass schema=YourRecord to open"
        ) from None
    if not (isinstance(found, type) and issubclass(found, Record)):
        raise SchemaError(f"{ref} is not a Record subclass; pass schema=YourRecord to open")
    return found


def _allowed(module_name: str, allow_modules: Sequence[str]) -> bool:
    return any(module_name == m or module_name.startswith(m + ".") for m in allow_modules)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "record"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def validate_record(schema: type[Record], value: Any, *, index: int = 0) -> Record:
    """Validate one input (a dict or a record instance) against ``schema``.

    Args:
        schema: The datanet's record class.
        value: A mapping of fields, or an instance of ``schema``.
        index: Position in the batch, for the error message.

    Returns:
        The validated record.

    Raises:
        SchemaError: Naming the record index and the offending field.
    """
    if type(value) is schema:
        return value
    if isinstance(value, Record):
        value = value.model_dump(exclude_none=True)
    if not isinstance(value, dict):
        raise SchemaError(
            f"record {index}: expected a dict of fields or a {schema.__name__}, "
            f"got {type(value).__name__}"
        )
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        raise SchemaError(
            f"record {index} does not fit {schema.__name__}: {_describe(exc)}"
        ) from None
