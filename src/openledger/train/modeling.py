"""Base model loading for training and the PEFT LoRA configuration a recipe describes."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from openledger.exceptions import MissingDependencyError, RecipeError
from openledger.models import load_base_model, resolve_model
from openledger.models.loading import parse_device, parse_dtype
from openledger.train.recipe import LoraRecipe

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "check_quantization",
    "linear_module_names",
    "load_for_training",
    "lora_config",
    "wrap_with_lora",
]

_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def check_quantization(recipe: LoraRecipe, device: torch.device) -> None:
    """Refuse 4bit/8bit loading (or LoftQ) where it cannot work, before weights are read.

    Raises:
        MissingDependencyError: If bitsandbytes (or, for LoftQ, scipy) is not installed.
        RecipeError: If the device is not CUDA (bitsandbytes quantisation needs CUDA).
    """
    if recipe.init == "loftq" and importlib.util.find_spec("scipy") is None:
        raise MissingDependencyError(
            "init='loftq' needs scipy (PEFT's LoftQ initialisation): `pip install scipy`"
        )
    if recipe.quantization is None:
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError(
            f"quantization={recipe.quantization!r} needs bitsandbytes and a CUDA GPU: "
            "`pip install bitsandbytes`, or set the recipe's quantization to null"
        )
    if device.type != "cuda":
        raise RecipeError(
            f"recipe field 'quantization': {recipe.quantization} loading needs a CUDA device "
            f"(bitsandbytes), but training runs on {device}; set quantization to null"
        )


def load_for_training(
    recipe: LoraRecipe, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the recipe's base model (quantised when asked) and its tokenizer.

    Raises:
        RecipeError, MissingDependencyError: See :func:`check_quantization`.
        UnknownModelError, ModelNotAvailableError: The base model cannot be found.
    """
    target = parse_device(device)
    check_quantization(recipe, target)
    if recipe.quantization is None:
        model, tokenizer = load_base_model(recipe.base_model, dtype=recipe.dtype, device=target)
    else:
        model, tokenizer = _load_quantized(recipe, target)
    if recipe.chat_template is not None:
        tokenizer.chat_template = recipe.chat_template
    model.config.use_cache = False
    return model, tokenizer


def _load_quantized(recipe: LoraRecipe, device: torch.device) -> tuple[Any, Any]:
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dtype = parse_dtype(recipe.dtype, device)
    quant: Any
    if recipe.quantization == "4bit":
        quant = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    source = resolve_model(recipe.base_model)
    model = AutoModelForCausalLM.from_pretrained(
        str(source.path), quantization_config=quant, dtype=dtype, device_map={"": device.index or 0}
    )
    model.config.name_or_path = source.name
    tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return prepare_model_for_kbit_training(model), tokenizer  # type: ignore[no-untyped-call]


def linear_module_names(model: Any) -> list[str]:
    """Return the distinct last-name parts of the model's linear layers (head excluded)."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear"):
            names.add(name.rsplit(".", 1)[-1])
    names.discard("lm_head")
    return sorted(names)


def lora_config(recipe: LoraRecipe, model: Any) -> Any:
    """Build the PEFT ``LoraConfig`` of a recipe, checking its target modules exist.

    Raises:
        RecipeError: If a target module is absent from the model (naming those present).
    """
    from peft import LoftQConfig, LoraConfig

    present = linear_module_names(model)
    if recipe.target_modules != "all-linear":
        missing = [t for t in recipe.target_modules if t not in present]
        if missing:
            raise RecipeError(
                f"recipe field 'target_modules': {missing} not found in {recipe.base_model}; "
                f"its linear modules are {present} (or use 'all-linear')"
            )
    init: Any = _INIT.get(recipe.init, "loftq")
    targets: Any = (
        recipe.target_modules
        if recipe.target_modules == "all-linear"
        else list(recipe.target_modules)
    )
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=recipe.r,
        lora_alpha=recipe.alpha,
        lora_dropout=recipe.dropout,
        target_modules=targets,
        use_dora=recipe.use_dora,
        use_rslora=recipe.use_rslora,
        init_lora_weights=init,
        loftq_config=LoftQConfig(loftq_bits=4) if recipe.init == "loftq" else {},
    )


def wrap_with_lora(model: Any, recipe: LoraRecipe) -> Any:
    """Wrap a base model in a trainable PEFT LoRA model, seeded by the recipe.

    Raises:
        RecipeError: If a target module is absent from the model.
    """
    import torch
    from peft import get_peft_model

    config = lora_config(recipe, model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return get_peft_model(model, config)
