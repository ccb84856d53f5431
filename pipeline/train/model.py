"""The base model of LoRA tuning: where it comes from (a local HF directory, or a GGUF converted once and cached,
by default the embedded SmolLM2-135M-Instruct), how it and its tokenizer load, and in which precision.

GGUF conversion: transformers loads the GGUF (dequantized to fp32) and it is saved once as an HF model under
``~/.cache/instruct-pipeline/`` (or ``$INSTRUCT_PIPELINE_CACHE``, or ``tune.cache_dir``), fixing the two traps
of a GGUF-loaded model (eos set to the template's start token, and a quantization flag that makes the Trainer
refuse to train or save it). Nothing is downloaded. torch and transformers load inside the functions.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..config import package_versions
from ..errors import InputError, TeacherError
from ..io.files import write_json_atomic

EMBEDDED_HF_NAME = "smollm2-135m-hf"


def need_tune_extra(e: ImportError, command: str = "pipeline tune") -> InputError:
    """The error for a missing torch/transformers/peft/trl: ``command`` needs the 'tune' extra."""
    return InputError(command, f"needs the 'tune' extra (pip install 'instruct-pipeline[tune]'): {e}")


def cache_root(cache_dir: str = "") -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("INSTRUCT_PIPELINE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "instruct-pipeline"


def end_of_turn_token(tokenizer) -> str:
    """The special token the chat template writes right after an assistant message (``<|im_end|>`` in ChatML,
    ``<|eot_id|>`` in Llama 3, ...); the tokenizer's eos when the template writes none."""
    mark = "XQZJ answer text XQZJ"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hello"},
                                          {"role": "assistant", "content": mark}], tokenize=False)
    tail = text[text.rindex(mark) + len(mark):]
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    best: tuple[int, str] | None = None
    for tok in specials:
        if tok:
            pos = tail.find(tok)
            if pos >= 0 and (best is None or pos < best[0] or (pos == best[0] and len(tok) > len(best[1]))):
                best = (pos, tok)
    if best is not None:
        return best[1]
    if tokenizer.eos_token is None:
        raise InputError("tune.base_model", "the tokenizer has neither an end-of-turn token nor an eos token")
    return tokenizer.eos_token


def fix_tokenizer(tokenizer) -> None:
    """The GGUF trap: transformers may set eos to the template's start token and leave pad unset. eos and pad
    become the template's end-of-turn token (``<|im_end|>`` for SmolLM2)."""
    if not getattr(tokenizer, "chat_template", None):
        return
    eot = end_of_turn_token(tokenizer)
    if tokenizer.eos_token != eot:
        tokenizer.eos_token = eot
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.bos_token:
        tokenizer.pad_token = eot


def _done(target: Path) -> bool:
    return (target / "conversion.json").is_file()


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Load a GGUF with transformers (dequantized to fp32) and save it once as an HF model at ``target``.

    Safe under concurrent first use (several processes, or accelerate ranks): one process converts under a file
    lock, into a temporary directory that is renamed into place when complete; the others wait and reuse it.
    """
    if _done(target):
        return target
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise need_tune_extra(e) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _done(target):
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cached model is an ordinary directory
        try:
            t0 = time.time()
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            fix_tokenizer(tokenizer)
            # The other trap: the model is flagged as GGUF-quantized, so Trainer refuses to train or save it.
            quantizer = getattr(model, "hf_quantizer", None)
            if quantizer is not None:
                quantizer.remove_quantization_config(model)
            for cfg in (model.config, model.generation_config):
                cfg.eos_token_id = tokenizer.eos_token_id
                cfg.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            stat = gguf.stat()
            write_json_atomic(tmp / "conversion.json", {
                "source": str(gguf), "source_bytes": stat.st_size, "converted_s": round(time.time() - t0, 1),
                "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
                "versions": package_versions()})
            if target.exists():  # a leftover that never completed (no conversion.json): move it aside
                stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base_model(spec: str = "", cache_dir: str = "") -> Path:
    """A local HF model directory: ``""`` is the embedded SmolLM2-135M-Instruct (converted and cached once), a
    ``.gguf`` file is converted and cached, a directory with ``config.json`` is used as it is."""
    root = cache_root(cache_dir)
    if not spec:
        from ..teachers.embedded import embedded_model_path

        try:
            gguf = embedded_model_path()
        except TeacherError as e:
            raise InputError("tune.base_model", str(e)) from None
        return convert_gguf(gguf, root / EMBEDDED_HF_NAME)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha1(f"{path.resolve()}:{path.stat().st_size}".encode()).hexdigest()[:8]
        return convert_gguf(path, root / f"{path.stem.lower()}-{digest}-hf")
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise InputError(str(path), "not an HF model directory (no config.json)", field="tune.base_model")
    raise InputError(str(path), "base model not found: give a local HF model directory or a .gguf file "
                     "(nothing is downloaded)", field="tune.base_model")


def pick_precision(precision: str) -> str:
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(str(path), "the tokenizer has no chat template; use an instruct/chat model",
                         field="tune.base_model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, precision: str = "fp32"):
    """An HF causal LM; bf16 weights when ``precision`` is bf16 (transformers 5: ``dtype=``)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    quantizer = getattr(model, "hf_quantizer", None)  # a directory saved before the GGUF fix
    if quantizer is not None and getattr(quantizer, "quantization_config", None) is not None \
            and str(getattr(quantizer.quantization_config, "quant_method", "")).endswith("gguf"):
        quantizer.remove_quantization_config(model)
    return model
