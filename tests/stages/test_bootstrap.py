"""The bootstrap stage keeps only what the filter stage keeps: both use one set of instance rules, so the target
counts tasks that reach the dataset."""
import random

from pipeline.config import BootstrapConfig, FilterConfig
from pipeline.filters.chain import filter_records
from pipeline.io.readers import load_seed_file
from pipeline.stages import bootstrap
from pipeline.teachers import Completion, Usage
from tests.conftest import OUR_SEEDS

INSTRUCTIONS = [
    "Describe the water cycle for a ten year old child.",
    "Suggest three names for a bakery that sells only bread.",
    "Explain why leaves change colour in the autumn months.",
    "Give two tips for sleeping better during a heat wave.",
    "Plan a one day walking tour of an old harbour town.",
    "Outline the steps to repot a small cactus safely at home.",
]
ANSWERS = {  # by the instruction's first word
    "Describe": "Water rises as vapour, forms clouds and falls again as rain.",
    "Suggest": "As an AI language model, I would pick Crumb, Loaf and Rise.",  # AI boilerplate
    "Explain": "Leaves lose chlorophyll. " * 6,  # a loop: repeated n-grams
    "Give": "I can't help but recommend a cool shower and a fan by the bed.",  # not a refusal
    "Plan": "Start at the quay, walk the old walls, and end at the lighthouse.",
    "Outline": "I'm sorry, I cannot help with that.",  # a refusal
}


class ScriptedTeacher:
    backend = model_name = "scripted"

    def __init__(self) -> None:
        self.usage = Usage()

    def generate(self, requests, on_result=None):
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            if text.startswith("Here are some example tasks"):
                reply = "\n".join(f"{k}. {t}" for k, t in enumerate(INSTRUCTIONS, start=1))
            else:
                reply = ANSWERS[text.split()[0]]
            c = Completion(reply, "stop", 10, 10)
            self.usage.add(c)
            if on_result:
                on_result(len(out), c)
            out.append(c)
        return out


def test_bootstrap_keeps_only_what_the_filter_stage_keeps():
    seeds = load_seed_file(OUR_SEEDS)
    fcfg = FilterConfig()
    state = bootstrap.BootstrapState.start(seeds, fcfg)
    result = bootstrap.step(state, ScriptedTeacher(), BootstrapConfig(request_batch_size=1), fcfg, random.Random(0))
    reasons = {r.record.instruction.split()[0]: r.reason for r in result.rejected}
    assert reasons == {"Suggest": "ai_boilerplate", "Explain": "repeated_ngrams", "Outline": "refusal"}
    kept_tasks = {r.task_id for r in result.kept}
    assert state.tasks_kept == len(kept_tasks) == 3
    # The filter stage, over what bootstrap kept and against the same seeds, drops none of it.
    final = filter_records(result.kept, fcfg, reference=seeds)
    assert final.rejected == [] and {r.task_id for r in final.kept} == kept_tasks


def test_a_cut_response_loses_its_last_item_once():
    class Cut(ScriptedTeacher):
        def generate(self, requests, on_result=None):
            out = super().generate(requests, on_result)
            if requests and requests[0].messages[-1]["content"].startswith("Here are some example tasks"):
                out = [Completion(c.text + "\n7. Write a haiku about", "length", 10, 10) for c in out]
            return out

    seeds = load_seed_file(OUR_SEEDS)
    state = bootstrap.BootstrapState.start(seeds, FilterConfig())
    result = bootstrap.step(state, Cut(), BootstrapConfig(request_batch_size=1), FilterConfig(), random.Random(0))
    cut = [r for r in result.rejected if r.reason == "truncated"]
    assert [r.record.instruction for r in cut] == ["Write a haiku about"]
    assert state.tasks_kept == 3  # the six complete items were all parsed
