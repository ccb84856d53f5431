"""A simulated OpenAI-compatible teacher server for benchmarks: parallel slots, a latency model, plausible answers.

It stands in for a vLLM server (``vllm serve ... --port``) so the request scheduling of ``pipeline run`` can be
measured without a GPU. Standard library only (uvloop is used when importable); a minimal asyncio HTTP/1.1
keep-alive server, so one core answers several thousand requests per second.

Endpoints (127.0.0.1 only):
  POST /v1/chat/completions   an answer of the kind the prompt asks for (see ``detect_kind``), after the latency
  GET  /v1/models             the model list
  GET  /stats                 JSON: requests, 429s, busy slot-seconds, active wall, occupancy, in flight (mean and
                              peak, time-weighted), requests/s, requests by kind, machine instructions in prompts
  POST /reset-stats           zero the statistics (the slots and the queue are kept)
  POST /v1/files, GET /v1/files/{id}[/content], POST /v1/batches, GET /v1/batches[/{id}],
  POST /v1/batches/{id}/cancel, POST /sim/batch-config
                              the Batch API (``BatchDesk``): batches answered like the chat endpoint, after
                              ``--batch-delay``, with optional refused and expired lines

Server model: ``--slots`` requests run at once (vLLM's max_num_seqs); more wait in a FIFO queue, as in vLLM. A
request holds its slot for its latency: ``--latency S`` seconds (``--latency-model fixed``), or heavy-tailed
(``heavy``: a seeded ``--tail-frac`` of the requests, in arrival order, take ``--tail-mult`` times the median S),
or ``zero`` (answer at once). ``--refuse-above N`` answers 429 with ``Retry-After`` to a request that arrives while
N requests are in flight (queued or running), like a rate-limiting gateway.

Statistics: active wall = first arrival to last completion; busy = slot-seconds spent serving; occupancy =
busy / (capacity x active wall), capacity = min(slots, refuse_above). In flight counts queued and running requests.

Answers are made from a seeded vocabulary (each request's ``seed`` field and its text seed its own generator, so
identical requests get identical answers and different ones differ), shaped so that the pipeline's parsers and
filters accept most of them: numbered lists of the number of new instructions asked for, Yes/No, labels, inputs,
answers, Evol-Instruct rewrites 10-20 words longer than their parent, "Not Equal" judgements; as JSON of the
schema's shape when the request has a JSON-schema ``response_format`` (structured outputs). ``max_tokens`` (or
``max_completion_tokens``) is honoured (finish_reason "length") only when an answer really exceeds it; tokens are
counted as ceil(chars / 4).

Run: ``python bench/sim_teacher.py --port 8000 --slots 256 --latency 2 --seed-file seed_tasks/seed_tasks.jsonl``;
it prints ``READY <port>`` on stdout once listening.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import signal
import sys
import time
import zlib
from collections import Counter, deque
from pathlib import Path
from urllib.parse import parse_qs

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary. No word of the pipeline's instruction blacklist (image, graph, picture, file, map, draw, plot, go to,
# video, audio, music, flowchart, diagram), no refusal words, nothing from the Evol-Instruct leak phrases.

ADJ = """ancient bright careful cheap clever coastal cold colourful compact crowded curious damp dark dense distant
dry dusty early elegant empty fast fertile fierce flat fragile fresh friendly frozen gentle generous gloomy golden
graceful greedy hidden hollow honest humble hungry icy idle loud loyal lucky mild modern modest muddy narrow neat
nervous noisy odd orange patient plain polite proud quiet rapid rare remote rich rigid rough rural rusty salty
scarce seasonal shallow sharp shiny silent slow smooth soft solid sour spicy steady steep sticky stormy strange
sturdy subtle sunny sweet tidy tiny tough tropical urban vast velvet vivid warm wealthy wild windy wise wooden young
brisk bumpy calm chilly crisp faint hasty jolly lively mellow misty nimble polished portable rustic sleepy""".split()
NOUN = """anchor apron attic bakery balcony bamboo barn basket beacon bicycle blanket bridge bucket cabin canal
candle canoe canyon carpet castle cellar chimney cliff clock compass cottage courtyard crater dam desert dock
elevator engine estuary factory farm ferry festival fountain garage garden glacier greenhouse harbour hedge helmet
hive island jetty kettle kiln ladder lagoon lantern library lighthouse locomotive market meadow mill monastery
mountain museum orchard oven pantry parcel pasture pavilion pier pond quarry railway ranch reef river rooftop
saddle satchel school shed shelter shipyard shop skyline stadium stable staircase station statue stream subway
swamp tavern telescope temple tent terrace theatre tower tractor trail tram tunnel valley vineyard volcano wagon
warehouse waterfall well wharf windmill workshop yard bakehouse boathouse brewery clinic dairy laundry orchestra
pharmacy quay sawmill smithy tannery terminal""".split()
PERSON = """nurse baker farmer pilot teacher plumber librarian student carpenter sailor chef gardener tailor
surveyor mechanic beekeeper potter shepherd miner fisher astronomer cyclist tourist retiree volunteer courier
electrician janitor translator veterinarian architect lawyer dentist firefighter paramedic locksmith""".split()
PLACE = """Lisbon Oslo Nairobi Hanoi Quito Perth Tallinn Bergen Cusco Dakar Galway Hobart Kyoto Lagos Malmo
Oaxaca Porto Riga Split Tromso Valencia Windhoek Zagreb Cardiff Dundee Lhasa Mombasa Nantes Ostrava Poznan""".split()
TOPIC = """budgeting composting erosion fermentation friction insulation irrigation migration navigation
pollination recycling refraction rotation sanitation tides ventilation vaccination photosynthesis evaporation
inflation taxation negotiation carpentry beekeeping bookbinding weaving pottery forestry glassblowing typography
orienteering birdwatching calligraphy cartography dyeing embroidery knitting masonry sailing tanning""".split()
VERB = """repair clean build inspect paint move sell rent visit guard heat cool measure restore insulate stock
rebuild survey decorate fence drain""".split()
ASPECT = ["tone", "urgency", "topic", "season", "audience", "difficulty", "mood", "formality"]
LABEL_SETS = {
    "tone": ["Cheerful", "Neutral", "Gloomy"], "urgency": ["Urgent", "Routine", "Optional"],
    "topic": ["Travel", "Food", "Work", "Health"], "season": ["Spring", "Summer", "Autumn", "Winter"],
    "audience": ["Children", "Adults", "Experts"], "difficulty": ["Easy", "Medium", "Hard"],
    "mood": ["Calm", "Tense", "Playful"], "formality": ["Formal", "Informal"],
}

# Instructions are composed: an opener of one kind of work, an object and a context, each with random slots, so two
# instructions share few words in order (ROUGE-L novelty passes at 0.7). {a} adjective, {n} noun, {p} person,
# {l} place, {t} topic, {v} verb, {k} number, {x} aspect, {f} written form, {d} document. "[cls]" marks a
# classification task (the server answers Yes to "is it classification?" for those).
FORMS = """poem story limerick fable toast speech riddle haiku dialogue anecdote eulogy slogan ballad monologue
advert sonnet chant postcard obituary proverb""".split()
DOCS = """note review comment message tweet headline complaint memo notice announcement testimonial
remark anecdote caption summary""".split()
OPENERS = [
    # writing
    "Write a {a} {f} about", "Compose a {f} celebrating", "Draft a {a} {f} that mentions",
    "Create a {f} for children about", "Invent a {f} whose hero is",
    # rewriting (with input)
    "Rewrite the following paragraph so it focuses on", "Shorten the given {d}, keeping only what concerns",
    "Turn the following notes into a {f} about", "Paraphrase this sentence for a {p}, keeping its point about",
    # explaining
    "Explain how {t} relates to", "Describe in plain words why {t} matters for", "Explain to a {p} the role of",
    "Summarise what a {p} should know about",
    # reasoning
    "Compare {t} with {t} when it comes to", "Weigh the pros and cons of", "Reason step by step about whether to {v}",
    "Predict what happens if nobody tries to {v}",
    # math
    "Calculate the yearly cost of running", "Estimate how many {n}s fit inside", "Solve the following equation, "
    "then relate it to", "Work out the average of these numbers and link it to",
    # coding
    "Write a Python function that models", "Find the bug in the given code, which tracks",
    "Write an SQL query that lists every {n} linked to", "Sketch a JavaScript class representing",
    # extracting
    "Extract every number from the following report about", "List the names mentioned in the given text on",
    "Pull the dates out of this {d} concerning",
    # planning
    "Plan a {k}-day itinerary around", "Make a weekly schedule for a {p} who looks after",
    "Outline a {a} project plan to {v}", "Prepare a packing list for a visit to",
    # advice
    "Give {k} practical tips on how to {v}", "Suggest ways a {p} can save money on",
    "Recommend {k} {a} habits for anyone who cares about", "Advise a nervous {p} about",
]
CLS_OPENERS = [
    "[cls]Decide whether the given {d} about {obj} is {a} or {a2}",
    "[cls]Say whether the following {d} on {obj} is positive or negative",
    "[cls]Determine whether this {d} about {obj} states a fact or an opinion",
    "[cls]Classify the given {d} about {obj} as urgent, routine, or optional",
    "[cls]Classify the following {d} concerning {obj} by its {x}",
    "[cls]Label the {x} of the given {d} about {obj}",
    "[cls]Tell whether this {d} about {obj} is true or false",
]
OBJECTS = ["the {a} {n} of {l}", "a {p}'s {a} {n}", "{t} at the {n}", "the old {n} near {l}", "{k} {a} {n}s",
           "a {n} run by a {p}", "the {n} and its {a} {n}", "{t} in {l}", "a {a} {n} beside a {n}"]
CONTEXTS = ["for a {p} in {l}", "using fewer than {k} sentences", "with a {a} tone", "as a {p} would",
            "during a {a} week in {l}", "and mention {t} once", "for readers who love {t}",
            "without using the word {n}", "in the voice of a {a} {p}", "before the {n} closes", "on a {a} budget",
            "for a {p} and a {p}", "so a {p} from {l} could follow it", "with one example from {t}"]
_CLASSIFY_START = re.compile(
    r"^\s*(?:decide whether|say whether|determine whether|tell whether|classify|categori[sz]e|label|"
    r"identify the category|which category|is the following|is this)\b", re.IGNORECASE)
_WORDS_RE = re.compile(r"\S+")
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


class Gen:
    """Random text pieces from one seeded generator."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def pick(self, seq):
        return seq[self.r.randrange(len(seq))]

    def phrase(self, n: int) -> str:
        """About n words of connected noun phrases ("the quiet mill in Riga and a nurse who studies tides")."""
        parts = ("the {a} {n} in {l}", "a {p} who studies {t}", "{k} {a} {n}s", "the {n} beside the {a} {n}",
                 "a {a} {p} from {l}", "its {a} {n} and {t}", "every {n} that a {p} can {v}")
        out: list[str] = []
        while len(out) < n:  # whole phrases: may run a few words over n
            if out:
                out.append(self.pick(("and", "with", "near", "plus", "or")))
            out.extend(self.fill(self.pick(parts), cap=False).split())
        return " ".join(out)

    def fill(self, template: str, cap: bool = True) -> str:
        r = self.r
        a1 = self.pick(ADJ)
        a2 = self.pick(ADJ)
        while a2 == a1:
            a2 = self.pick(ADJ)
        out = template.replace("{a2}", a2).replace("{k2}", str(r.randint(2, 9)))
        out = re.sub(r"\{(\w)\}", lambda m: self._slot(m.group(1)), out)
        out = _ARTICLE.sub(r"\1n ", out)
        return out[0].upper() + out[1:] if cap else out

    def _slot(self, k: str) -> str:
        if k == "a":
            return self.pick(ADJ)
        if k == "n":
            return self.pick(NOUN)
        if k == "p":
            return self.pick(PERSON)
        if k == "l":
            return self.pick(PLACE)
        if k == "t":
            return self.pick(TOPIC)
        if k == "v":
            return self.pick(VERB)
        if k == "k":
            return str(self.r.randint(2, 12))
        if k == "x":
            return self.pick(ASPECT)
        if k == "f":
            return self.pick(FORMS)
        if k == "d":
            return self.pick(DOCS)
        return k

    def instruction(self) -> str:
        r = self.r
        if r.random() < 0.2:
            text = self.pick(CLS_OPENERS).replace("{obj}", self.pick(OBJECTS))
            text += ", " + self.pick(CONTEXTS)
        else:
            text = f"{self.pick(OPENERS)} {self.pick(OBJECTS)} {self.pick(CONTEXTS)}"
            if r.random() < 0.4:
                text += ", " + self.pick(CONTEXTS)
        return self.fill(text).replace("[cls]", "").replace("[Cls]", "") + "."

    def sentence(self) -> str:
        r = self.r
        forms = (
            "The {a} {n} near {l} needs a {p} who knows {t}.",
            "Every {p} agrees that a {a} {n} helps with {t}.",
            "In {l}, the {n} stays {a} for about {k} months.",
            "A {a} {p} can {v} the {n} in {k} hours with care.",
            "Most visitors to the {a} {n} ask about {t} first.",
            "Local records from {l} mention a {a} {n} and a {a} {n}.",
            "Keep the {n} {a} and check it every {k} days.",
            "{t} matters here because the {n} is {a} and {a}.",
        )
        s = self.fill(self.pick(forms))
        return s if r.random() < 0.9 else s.replace(".", ", which surprised the local " + self.pick(PERSON) + ".")

    def paragraph(self, lo: int, hi: int) -> str:
        return " ".join(self.sentence() for _ in range(self.r.randint(lo, hi)))


# ---------------------------------------------------------------------------------------------------------------
# Kinds of request, from the prompt text

EVOLVE_OPS = ("breadth", "complicate_input", "constraints", "deepen", "concretize", "reasoning")


def _text(messages) -> tuple[str, str]:
    """(system text, last user text)."""
    system, user = "", ""
    for m in messages or []:
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, list):  # content parts
            c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
        c = c if isinstance(c, str) else ""
        if m.get("role") == "system":
            system = c
        elif m.get("role") == "user":
            user = c
    return system, user


def detect_kind(messages) -> str:
    """One of: generate, classify, labels, input_for_label, input, evolve_<op>, equal, judge, answer."""
    system, user = _text(messages)
    s, u = system.lower(), user.lower()
    if "#given prompt#" in u or "prompt rewriter" in s or "prompt creator" in s:
        return "evolve_" + _evolve_op(u)
    if "equal or not equal" in u or ("compare two tasks" in s and "equal" in s):
        return "equal"
    if "a, b, or tie" in u or "grade answers" in s:
        return "judge"
    if "classification task" in s and ("yes or no" in s or "two kinds" in s):
        return "classify"
    if "list the possible answers" in s or "labels only" in s:
        return "labels"
    if "inputs for classification" in s or ("\nanswer:" in u and u.lstrip().startswith("task:") and "input" in s):
        return "input_for_label"
    if "example inputs" in s or ("input only" in s and u.lstrip().startswith("task:")):
        return "input"
    if ("example tasks" in u or "examples" in u) and (re.search(r"\bwrite \d+ new\b", u)
                                                     or re.search(r"number them 1 to \d+", u)):
        return "generate"
    return "answer"


def _evolve_op(u: str) -> str:
    ask = u[u.rfind("\n\n"):] if "\n\n" in u else u
    if "brand-new" in ask or "brand new" in ask or "#created prompt#" in ask:
        return "breadth"
    if "structured data" in ask or "json" in ask or "table" in ask:
        return "complicate_input"
    if "constraint" in ask or "requirement" in ask:
        return "constraints"
    if "more depth" in ask or "trade-off" in ask or "comparison" in ask:
        return "deepen"
    if "specific" in ask:
        return "concretize"
    if "reasoning" in ask or "steps" in ask:
        return "reasoning"
    return "constraints"


_GIVEN = re.compile(r"(?im)^[ \t]*#given prompt#[ \t]*:?[ \t]*\n")


def parse_given(user: str) -> tuple[str, str]:
    """(instruction, input) of an Evol-Instruct prompt's last #Given Prompt#."""
    heads = list(_GIVEN.finditer(user))
    body = user[heads[-1].end():] if heads else user
    cut = body.rfind("\n\n")
    if cut >= 0:
        body = body[:cut]
    m = re.search(r"\n#input#[^\n]*\n", body, re.IGNORECASE)
    if m:
        return body[:m.start()].strip(), body[m.end():].strip()
    return body.strip(), ""


def parse_shown(user: str) -> list[str]:
    """The in-context instructions of a generation prompt ("- " items before the "Write N new" line)."""
    items: list[str] = []
    started = False
    for line in user.splitlines():
        low = line.strip().lower()
        if re.match(r"write \d+ new", low):
            break
        if line.startswith("- "):
            items.append(line[2:].strip())
            started = True
        elif started and line.strip() and items:
            items[-1] += " " + line.strip()
    return items


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


# ---------------------------------------------------------------------------------------------------------------
# Answers


def _last_task(user: str) -> tuple[str, str]:
    """(task, label) from "Task: ...\\nAnswer: ..." user turns."""
    task, label = user, ""
    m = re.search(r"(?is)task:\s*(.*?)(?:\nanswer:\s*(.*))?$", user)
    if m:
        task, label = m.group(1).strip(), (m.group(2) or "").strip()
    return task, label


def answer_for(kind: str, messages, g: Gen) -> str:
    system, user = _text(messages)
    if kind == "generate":
        m = re.search(r"\bwrite (\d+) new\b", user, re.IGNORECASE) or re.search(r"number them 1 to (\d+)", user,
                                                                                 re.IGNORECASE)
        count = max(1, min(int(m.group(1)) if m else 10, 200))
        seen: set[str] = set()
        lines = []
        while len(lines) < count:
            ins = g.instruction()
            if ins not in seen:
                seen.add(ins)
                lines.append(f"{len(lines) + 1}. {ins}")
        return "\n".join(lines)
    if kind == "classify":
        task, _ = _last_task(user)
        return "Yes" if _CLASSIFY_START.search(task) else "No"
    if kind == "labels":
        task, _ = _last_task(user)
        for aspect, labels in LABEL_SETS.items():
            if re.search(rf"\b{aspect}\b", task, re.IGNORECASE):
                return ", ".join(labels)
        return ", ".join(g.r.sample(list(LABEL_SETS.values()), 1)[0])
    if kind == "input_for_label":
        task, label = _last_task(user)
        return f"{g.paragraph(1, 2)} Overall it felt {label.lower() or g.pick(ADJ)} to the {g.pick(PERSON)}."
    if kind == "input":
        task, _ = _last_task(user)
        return make_input(task, g)
    if kind.startswith("evolve_"):
        instruction, _inp = parse_given(user)
        return rewrite(kind[len("evolve_"):], instruction, g)
    if kind == "equal":
        return "Not Equal"
    if kind == "judge":
        return g.pick(["A", "B", "tie"])
    return make_answer(user, g)


def as_json(schema: dict, text: str) -> str:
    """A structured-outputs answer (``response_format`` with a JSON schema, as vLLM honours it): the schema's one
    property holds the text answer, a list (numbered lines, or comma-separated labels) or a single string."""
    props = schema.get("properties") or {}
    if len(props) != 1:
        return text
    [(key, spec)] = props.items()
    if spec.get("type") != "array":
        return json.dumps({key: text.strip()})
    lines = [re.sub(r"^\s*\d+\.\s*", "", line).strip() for line in text.splitlines() if line.strip()]
    items = lines if len(lines) > 1 else [s.strip() for s in text.split(",") if s.strip()]
    return json.dumps({key: items[: spec.get("maxItems") or len(items)]})


def make_input(task: str, g: Gen) -> str:
    low = task.lower()
    if re.search(r"\b(function|code|python|program|snippet|bug)\b", low):
        n = g.pick(NOUN)
        return (f"def sort_{n}s(records):\n    return sorted(records, key=lambda r: r['{g.pick(ADJ)}'])\n\n"
                f"print(sort_{n}s([{{'{g.pick(ADJ)}': {g.r.randint(1, 9)}}}, {{'{g.pick(ADJ)}': {g.r.randint(1, 9)}}}]))")
    if re.search(r"\b(numbers|equation|list|sequence|array)\b", low):
        return ", ".join(str(g.r.randint(1, 999)) for _ in range(g.r.randint(5, 9)))
    if re.search(r"\b(table|data|csv|json|report|records)\b", low):
        rows = [f"{g.pick(NOUN)}, {g.pick(PLACE)}, {g.r.randint(10, 900)}" for _ in range(g.r.randint(3, 5))]
        return "name, place, visitors\n" + "\n".join(rows)
    if re.search(r"\b(message|email|letter|note|notes|comment|review)\b", low):
        return f"Hi {g.pick(PERSON)}, {g.paragraph(1, 2)} Best wishes, {g.pick(PLACE)} office."
    return g.paragraph(2, 3)


def make_answer(prompt: str, g: Gen) -> str:
    low = prompt.lower()
    if re.search(r"\b(list|tips|steps|risks|three|five|books|schedule|plan)\b", low):
        n = g.r.randint(3, 5)
        return "\n".join(f"{i + 1}. {g.sentence()}" for i in range(n))
    if re.search(r"\b(calculate|solve|costs|how many|total)\b", low):
        a, b = g.r.randint(2, 50), g.r.randint(2, 50)
        return (f"First work out the parts: {a} times {b} is {a * b}. {g.sentence()} "
                f"Adding the remaining {a + b} gives {a * b + a + b}. The answer is {a * b + a + b}.")
    if re.search(r"\b(function|python|sql|query|code|bug)\b", low):
        n = g.pick(NOUN)
        return (f"Here is one way to do it:\n\ndef count_{n}s(items):\n    return sum(1 for item in items if "
                f"'{g.pick(ADJ)}' in item)\n\n{g.sentence()}")
    if re.search(r"\b(whether|classify|category|positive or negative|fact or)\b", low):
        return f"{g.pick(['Positive', 'Negative', 'Routine', 'Urgent', 'Fact', 'Opinion'])}. {g.sentence()}"
    return g.paragraph(3, 6)


_DANGLING = {"a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "with", "about", "by", "at", "from",
             "that", "this", "your", "my", "as", "into", "is", "are", "be", "you", "it", "its", "their"}


def rewrite(op: str, instruction: str, g: Gen) -> str:
    """An Evol-Instruct rewrite: in-depth ones keep the first ~60% of the parent's words (ROUGE-L recall of the
    parent >= 0.3, and far enough below the 0.7 novelty threshold), rephrase the rest and add 10-20 words."""
    words = _WORDS_RE.findall(instruction.split("\n")[0] if instruction else "")
    if op == "breadth" or not words:
        new = g.instruction()
        while len(new.split()) < len(words) - 4:
            new = new.rstrip(".") + f" for a {g.pick(PERSON)} in {g.pick(PLACE)}."
        return new
    keep = max(2, math.ceil(0.6 * len(words)))
    while keep > 2 and words[keep - 1].lower().strip(".,;:!?") in _DANGLING:
        keep -= 1
    head = " ".join(words[:keep]).rstrip(".,;:!?")
    rest = len(words) - keep
    added = g.r.randint(10, 14) + rest  # whole phrases add up to 6 more: growth 10-20 words
    extra = {
        "constraints": "while keeping it under {k} sentences and mentioning",
        "deepen": "and explain the reasons, effects and trade-offs involving",
        "concretize": "for a {p} in {l} who has exactly {k} days and",
        "reasoning": "and reason through it in several numbered steps about",
        "complicate_input": "using the record below, where",
    }.get(op, "with one added condition about")
    lead = g.fill(extra, cap=False)
    text = f"{head} {lead} {g.phrase(max(2, added - len(lead.split())))}."
    if op == "complicate_input":
        data = {g.pick(NOUN): g.r.randint(1, 99) for _ in range(3)}
        data["place"] = g.pick(PLACE)
        text += "\n" + json.dumps(data)
    return text


# ---------------------------------------------------------------------------------------------------------------
# Statistics


class Stats:
    def __init__(self, capacity: int, clock):
        self.capacity = capacity
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.refused = 0
        self.errors = 0
        self.cancelled = 0
        self.busy = 0.0
        self.cancelled_busy = 0.0  # slot-seconds of requests cancelled while running (a lost hedge race)
        self.first_arrival: float | None = None
        self.last_completion: float | None = None
        self.area = 0.0  # integral of in-flight over time
        self.t_last: float | None = None
        self.peak = 0
        self.peak_running = 0
        self.by_kind: Counter = Counter()
        self.length_cut: Counter = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.gen_prompts = 0
        self.gen_with_machine = 0
        self.shown_total = 0
        self.shown_machine = 0
        self.gen_after_first = 0
        self.gen_after_first_with_machine = 0
        self.first_machine_seen = False
        self.timeline: dict[int, float] = {}  # second since the first arrival -> busy slot-seconds in it

    def add_busy(self, start: float, end: float) -> None:
        """Spread one request's busy interval over the 1-second buckets of the timeline."""
        t0 = self.first_arrival or start
        a, b = start - t0, end - t0
        while a < b:
            k = int(a)
            step = min(b, k + 1) - a
            self.timeline[k] = self.timeline.get(k, 0.0) + step
            a += step

    def observe(self, in_flight: int, now: float) -> None:
        """Call before in-flight changes."""
        if self.t_last is not None:
            self.area += in_flight * (now - self.t_last)
        self.t_last = now

    def snapshot(self, server: "Server") -> dict:
        now = self.clock()
        running_busy = sum(now - st for st in server.running.values())
        end = self.last_completion or now
        if server.running or server.queue:
            end = now
        wall = (end - self.first_arrival) if self.first_arrival is not None else 0.0
        area = self.area + (server.in_flight * (now - self.t_last) if self.t_last is not None and end == now else 0)
        busy = self.busy + running_busy
        cap = self.capacity
        gp = self.gen_prompts
        return {
            "config": server.describe(),
            "requests": self.requests,
            "refused_429": self.refused,
            "errors": self.errors,
            "cancelled": self.cancelled,
            "busy_slot_s": round(busy, 3),
            "cancelled_slot_s": round(self.cancelled_busy, 3),
            "active_wall_s": round(wall, 3),
            "capacity": cap,
            "occupancy": round(busy / (cap * wall), 4) if wall > 0 and cap else None,
            "mean_in_flight": round(area / wall, 2) if wall > 0 else None,
            "peak_in_flight": self.peak,
            "peak_running": self.peak_running,
            "in_flight_now": server.in_flight,
            "requests_per_s": round(self.requests / wall, 2) if wall > 0 else None,
            "by_kind": dict(sorted(self.by_kind.items())),
            "finish_length_by_kind": dict(self.length_cut),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "generation_prompts": gp,
            "generation_prompts_with_machine": self.gen_with_machine,
            "machine_prompt_share": round(self.gen_with_machine / gp, 4) if gp and server.seeds else None,
            "machine_slot_share": round(self.shown_machine / self.shown_total, 4) if self.shown_total else None,
            "machine_prompt_share_after_first": (round(self.gen_after_first_with_machine / self.gen_after_first, 4)
                                                 if self.gen_after_first else None),
            "seed_instructions_known": len(server.seeds),
            # busy share of the slots in each second since the first request (where occupancy is lost)
            "timeline": [round(self.timeline.get(k, 0.0) / cap, 3) for k in range(int(wall) + 1)] if cap else [],
            "batch": server.desk.snapshot(),
        }


# ---------------------------------------------------------------------------------------------------------------
# Server


class Server:
    def __init__(self, args):
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time
        self.slots = args.slots
        cap = args.slots if not args.refuse_above else min(args.slots, args.refuse_above)
        self.stats = Stats(cap, self.clock)
        self.running: dict[int, float] = {}  # request id -> start time
        self.queue: deque = deque()
        self.in_flight = 0
        self.lat_rng = random.Random(args.seed * 7919 + 1)
        self.next_id = 0
        self.seeds: set[str] = set()
        for path in args.seed_file or []:
            self.seeds |= load_seed_instructions(path)
        self.desk = BatchDesk(self, args)
        self.trace = open(args.trace, "a", buffering=1) if args.trace else None

    def describe(self) -> dict:
        a = self.args
        return {"slots": a.slots, "latency_model": a.latency_model, "latency_s": a.latency,
                "tail_frac": a.tail_frac, "tail_mult": a.tail_mult, "refuse_above": a.refuse_above,
                "retry_after_s": a.retry_after, "seed": a.seed}

    def latency(self) -> float:
        a = self.args
        if a.latency_model == "zero" or a.latency <= 0:
            return 0.0
        if a.latency_model == "heavy" and self.lat_rng.random() < a.tail_frac:
            return a.latency * a.tail_mult
        return a.latency

    # -- one chat request ----------------------------------------------------------------------------------------
    def answer(self, req) -> tuple[int, dict, str, int, int]:
        """(HTTP status, response body, kind, prompt tokens, completion tokens) for one chat completion request
        body: what the chat endpoint answers and what a batch line gets."""
        try:
            messages = req["messages"]
            kind = detect_kind(messages)
        except Exception as e:  # noqa: BLE001
            return 400, {"error": {"message": f"bad request: {e}", "type": "invalid_request"}}, "", 0, 0
        system, user = _text(messages)
        seed = req.get("seed")
        if seed is None:
            self.next_id += 1
            seed = self.next_id
        g = Gen((int(seed) * 1_000_003) ^ zlib.crc32(user.encode("utf-8", "replace")) ^ (self.args.seed << 32))
        text = answer_for(kind, messages, g)
        fmt = req.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            text = as_json(fmt.get("json_schema", {}).get("schema", {}), text)
        finish = "stop"
        max_tokens = req.get("max_tokens") or req.get("max_completion_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0 and tokens(text) > max_tokens:
            text = text[: max_tokens * 4]
            finish = "length"
            self.stats.length_cut[kind] += 1
        ptok = sum(tokens(m.get("content") or "") if isinstance(m.get("content"), str) else 0
                   for m in messages if isinstance(m, dict))
        ctok = tokens(text)
        body = {
            "id": f"chatcmpl-sim-{self.next_id}-{seed}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model") or self.args.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": ptok, "completion_tokens": ctok, "total_tokens": ptok + ctok},
        }
        if kind == "generate":
            self._count_generation(user)
        return 200, body, kind, ptok, ctok

    def chat(self, conn: "Conn", body: bytes) -> None:
        now = self.clock()
        st = self.stats
        if self.args.refuse_above and self.in_flight >= self.args.refuse_above:
            st.refused += 1
            conn.send(429, json.dumps({"error": {"message": "too many requests in flight", "type": "rate_limit",
                                                 "code": 429}}).encode(),
                      extra=f"Retry-After: {self.args.retry_after:g}\r\n")
            return
        try:
            req = json.loads(body)
        except ValueError as e:
            req = {"error": str(e)}
        status, response, kind, ptok, ctok = self.answer(req if isinstance(req, dict) else {})
        if status != 200:
            st.errors += 1
            conn.send(status, json.dumps(response).encode())
            return
        payload = json.dumps(response).encode()
        if st.first_arrival is None:
            st.first_arrival = now
        st.observe(self.in_flight, now)
        self.in_flight += 1
        st.peak = max(st.peak, self.in_flight)
        self.next_id += 1
        job = (self.next_id, conn, payload, kind, ptok, ctok)
        conn.pending.add(self.next_id)
        if len(self.running) < self.slots:
            self._start(job, now)
        else:
            self.queue.append(job)

    def _count_generation(self, user: str) -> None:
        st = self.stats
        shown = parse_shown(user)
        machine = sum(1 for s in shown if _norm(s) not in self.seeds) if self.seeds else 0
        st.gen_prompts += 1
        st.shown_total += len(shown)
        st.shown_machine += machine
        if machine:
            st.gen_with_machine += 1
        if st.first_machine_seen:
            st.gen_after_first += 1
            if machine:
                st.gen_after_first_with_machine += 1
        elif machine:
            st.first_machine_seen = True
            st.gen_after_first += 1
            st.gen_after_first_with_machine += 1

    def _start(self, job, now: float) -> None:
        rid = job[0]
        self.running[rid] = now
        self.stats.peak_running = max(self.stats.peak_running, len(self.running))
        delay = self.latency()
        if self.args.trace:
            self.trace.write(f"{job[3]}\t{now - (self.stats.first_arrival or now):.3f}\t{delay:.2f}\t{rid}\n")
        if delay <= 0:
            self._finish(job)
        else:
            self.loop.call_later(delay, self._finish, job)

    def _finish(self, job) -> None:
        rid, conn, payload, kind, ptok, ctok = job
        start = self.running.pop(rid, None)
        if start is None:
            return
        now = self.clock()
        st = self.stats
        st.busy += now - start
        st.add_busy(start, now)
        st.observe(self.in_flight, now)
        self.in_flight -= 1
        st.last_completion = now
        if rid in conn.pending:
            conn.pending.discard(rid)
            st.requests += 1
            st.by_kind[kind] += 1
            st.prompt_tokens += ptok
            st.completion_tokens += ctok
            conn.send(200, payload)
        self._next(now)

    def _next(self, now: float) -> None:
        while self.queue and len(self.running) < self.slots:
            job = self.queue.popleft()
            if job[0] not in job[1].pending:  # the client went away while it waited
                self.stats.observe(self.in_flight, now)
                self.in_flight -= 1
                continue
            self._start(job, now)

    def drop_connection(self, conn: "Conn") -> None:
        """A client closed its connection: its running requests free their slots (as vLLM aborts them)."""
        now = self.clock()
        for rid in list(conn.pending):
            conn.pending.discard(rid)
            self.stats.cancelled += 1
            start = self.running.pop(rid, None)
            if start is not None:
                self.stats.busy += now - start
                self.stats.cancelled_busy += now - start
                self.stats.add_busy(start, now)
                if self.trace:
                    self.trace.write(f"cancel\t{now - (self.stats.first_arrival or now):.3f}\t0\t{rid}\n")
                self.stats.observe(self.in_flight, now)
                self.in_flight -= 1
        # queued ones are skipped (and leave in-flight) when they reach the head of the queue
        self._next(now)

    def route(self, conn: "Conn", method: str, target: str, body: bytes, headers: dict | None = None) -> None:
        path, _, query = target.partition("?")
        path = path.rstrip("/")
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            self.chat(conn, body)
        elif path.startswith(("/v1/files", "/v1/batches", "/sim/batch")):
            self.desk.route(conn, method, path, parse_qs(query), body, headers or {})
        elif method == "GET" and path in ("/v1/models", "/models"):
            conn.send(200, json.dumps({"object": "list", "data": [
                {"id": self.args.model, "object": "model", "created": 0, "owned_by": "sim"}]}).encode())
        elif method == "GET" and path == "/stats":
            conn.send(200, json.dumps(self.stats.snapshot(self)).encode())
        elif method == "POST" and path == "/reset-stats":
            now = self.clock()
            self.stats.reset()
            self.stats.t_last = now
            if self.in_flight:
                self.stats.first_arrival = now
                # requests still running count from now on
                for rid in self.running:
                    self.running[rid] = now
            conn.send(200, b'{"reset": true}')
        elif method == "GET" and path in ("", "/health"):
            conn.send(200, b'{"ok": true}')
        else:
            conn.send(404, json.dumps({"error": {"message": f"no route {method} {path}"}}).encode())


# ---------------------------------------------------------------------------------------------------------------
# The Files and Batches endpoints (the OpenAI Batch API)


def _frac_hit(key: str, frac: float) -> bool:
    """A seeded choice of about ``frac`` of the keys, the same on every run."""
    return frac > 0 and zlib.crc32(key.encode()) % 10_000 < frac * 10_000


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, content) of a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise ValueError("no multipart boundary")
    sep = b"--" + m.group(1).encode()
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(sep)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode("latin-1")
        name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        if name:
            out[name.group(1)] = (filename.group(1) if filename else None, content.removesuffix(b"\r\n"))
    return out


class BatchDesk:
    """Files (``purpose="batch"``) and Batches, in memory. A batch answers every line as the chat endpoint would
    (``Server.answer``) ``--batch-delay`` seconds after it is created, with no slots or queue. Faults, each chosen
    per custom_id by a seeded hash: ``--batch-refuse-frac`` of the lines come back as HTTP 400 in the error file;
    ``--batch-expire-frac`` of the lines expire the first time they are submitted (the batch ends "expired", the
    line in the error file as ``batch_expired``). ``--batch-create-delay`` makes the batch at once but answers the
    create call that much later (a client killed meanwhile never learns the id). ``POST /sim/batch-config`` changes
    these (and ``refuse_create``: answer 403 to batch creation) while the server runs.

    Counters (``/stats`` under "batch"): files uploaded, batches created, lines submitted, answered, refused,
    expired, and ``duplicate_lines``: lines whose custom_id was already answered or is waiting in another batch
    (a client that pays twice for one request)."""

    FIELDS = ("delay", "create_delay", "refuse_create", "refuse_frac", "expire_frac")

    def __init__(self, server: "Server", args):
        self.server = server
        self.files: dict[str, dict] = {}
        self.content: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}  # in creation order
        self.delay, self.create_delay = args.batch_delay, args.batch_create_delay
        self.refuse_create = False
        self.refuse_frac, self.expire_frac = args.batch_refuse_frac, args.batch_expire_frac
        self.expired_once: set[str] = set()
        self.answered: set[str] = set()
        self.waiting: Counter = Counter()  # custom_id -> unfinished batches holding it
        self.counts: Counter = Counter()
        self.by_kind: Counter = Counter()
        self.next_id = 0

    def snapshot(self) -> dict:
        return {**{k: self.counts[k] for k in ("files_uploaded", "batches_created", "lines_submitted",
                                                "lines_answered", "lines_refused", "lines_expired",
                                                "duplicate_lines")},
                "by_kind": dict(sorted(self.by_kind.items())),
                "batches": [{"id": b["id"], "status": b["status"], "metadata": b["metadata"],
                             "request_counts": b["request_counts"]} for b in self.batches.values()]}

    def _id(self, prefix: str) -> str:
        self.next_id += 1
        return f"{prefix}-sim{self.next_id:05d}"

    def route(self, conn: "Conn", method: str, path: str, query: dict, body: bytes, headers: dict) -> None:
        parts = path.split("/")[2:]  # ["files", id, "content"] / ["batches", id] / ...
        try:
            if method == "POST" and path == "/sim/batch-config":
                for k, v in json.loads(body or b"{}").items():
                    if k not in self.FIELDS:
                        raise ValueError(f"unknown setting {k}")
                    setattr(self, k, v)
                return conn.send(200, json.dumps({k: getattr(self, k) for k in self.FIELDS}).encode())
            if parts[0] == "files":
                if method == "POST" and len(parts) == 1:
                    return self.upload(conn, body, headers.get("content-type", ""))
                if method == "GET" and len(parts) >= 2 and parts[1] in self.files:
                    if len(parts) == 3 and parts[2] == "content":
                        return conn.send(200, self.content[parts[1]], content_type="application/octet-stream")
                    return conn.send(200, json.dumps(self.files[parts[1]]).encode())
            if parts[0] == "batches":
                if method == "POST" and len(parts) == 1:
                    return self.create(conn, json.loads(body))
                if method == "GET" and len(parts) == 1:
                    return self.list(conn, query)
                if len(parts) >= 2 and parts[1] in self.batches:
                    batch = self.batches[parts[1]]
                    if method == "POST" and len(parts) == 3 and parts[2] == "cancel":
                        if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                            self.finish(batch["id"], cancel=True)
                        return conn.send(200, json.dumps(batch).encode())
                    if method == "GET" and len(parts) == 2:
                        return conn.send(200, json.dumps(batch).encode())
        except (ValueError, KeyError, TypeError) as e:
            return conn.send(400, json.dumps({"error": {"message": f"bad request: {e}",
                                                        "type": "invalid_request_error"}}).encode())
        conn.send(404, json.dumps({"error": {"message": f"no such object: {method} {path}"}}).encode())

    def upload(self, conn: "Conn", body: bytes, content_type: str) -> None:
        form = parse_multipart(body, content_type)
        filename, data = form["file"]
        purpose = form.get("purpose", (None, b""))[1].decode()
        fid = self._id("file")
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                           "filename": filename or "upload.jsonl", "purpose": purpose, "status": "processed"}
        self.content[fid] = data
        self.counts["files_uploaded"] += 1
        conn.send(200, json.dumps(self.files[fid]).encode())

    def create(self, conn: "Conn", req: dict) -> None:
        if self.refuse_create:
            return conn.send(403, json.dumps({"error": {"message": "simulated: batch creation is not allowed",
                                                        "type": "permission_error"}}).encode())
        fid = req["input_file_id"]
        if fid not in self.content:
            raise ValueError(f"no file {fid}")
        if req.get("endpoint") != "/v1/chat/completions" or req.get("completion_window") != "24h":
            raise ValueError("endpoint must be /v1/chat/completions and completion_window 24h")
        lines = [json.loads(line) for line in self.content[fid].decode().splitlines() if line.strip()]
        cids = [line["custom_id"] for line in lines]
        if len(set(cids)) != len(cids):
            raise ValueError("duplicate custom_id in one batch")
        bid = self._id("batch")
        now = int(time.time())
        batch = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None, "input_file_id": fid,
                 "completion_window": "24h", "status": "in_progress", "output_file_id": None,
                 "error_file_id": None, "created_at": now, "in_progress_at": now, "expires_at": now + 86400,
                 "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
                 "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                 "metadata": req.get("metadata") or {}}
        self.batches[bid] = batch
        self.counts["batches_created"] += 1
        self.counts["lines_submitted"] += len(lines)
        for cid in cids:
            if cid in self.answered or self.waiting[cid]:
                self.counts["duplicate_lines"] += 1
            self.waiting[cid] += 1
        loop = self.server.loop
        loop.call_later(max(self.delay, 0.0), self.finish, bid)
        payload = json.dumps(batch).encode()
        if self.create_delay > 0:
            loop.call_later(self.create_delay, conn.send, 200, payload)
        else:
            conn.send(200, payload)

    def list(self, conn: "Conn", query: dict) -> None:
        limit = int(query.get("limit", ["20"])[0])
        after = query.get("after", [None])[0]
        newest_first = list(reversed(self.batches.values()))
        if after:
            ids = [b["id"] for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        page = newest_first[:limit]
        conn.send(200, json.dumps({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                   "last_id": page[-1]["id"] if page else None,
                                   "has_more": len(newest_first) > limit}).encode())

    def finish(self, bid: str, cancel: bool = False) -> None:
        batch = self.batches[bid]
        if batch["status"] != "in_progress":
            return
        out, err = [], []
        expired = False
        for line in self.content[batch["input_file_id"]].decode().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            cid = row["custom_id"]
            self.waiting[cid] -= 1
            rid = self._id("batch_req")
            if cancel:
                err.append({"id": rid, "custom_id": cid, "response": None,
                            "error": {"code": "batch_cancelled", "message": "The batch was cancelled."}})
                continue
            if _frac_hit("expire:" + cid, self.expire_frac) and cid not in self.expired_once:
                self.expired_once.add(cid)
                expired = True
                self.counts["lines_expired"] += 1
                err.append({"id": rid, "custom_id": cid, "response": None,
                            "error": {"code": "batch_expired", "message": "This request could not be executed "
                                      "before the completion window expired."}})
                continue
            self.answered.add(cid)
            if _frac_hit("refuse:" + cid, self.refuse_frac):
                status, body = 400, {"error": {"message": "simulated: this request was refused",
                                               "type": "invalid_request_error", "code": None}}
            else:
                status, body, kind, _, _ = self.server.answer(row.get("body") or {})
                if status == 200:
                    self.by_kind[kind] += 1
            line_out = {"id": rid, "custom_id": cid,
                        "response": {"status_code": status, "request_id": rid, "body": body}, "error": None}
            if status == 200:
                self.counts["lines_answered"] += 1
                out.append(line_out)
            else:
                self.counts["lines_refused"] += 1
                err.append(line_out)
        now = int(time.time())
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = self._id("file")
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": now,
                                   "filename": f"{bid}_{name[:-8]}.jsonl", "purpose": "batch_output",
                                   "status": "processed"}
                self.content[fid] = data
                batch[name] = fid
        batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        status = "cancelled" if cancel else "expired" if expired else "completed"
        batch["status"] = status
        batch[f"{status}_at"] = now


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 411: "Length Required",
            413: "Payload Too Large",
            429: "Too Many Requests"}
MAX_BODY = 16 * 1024 * 1024


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection. Responses go out in request order (a pipelined request waits until the
    one before it is answered)."""

    def __init__(self, server: Server):
        self.server = server
        self.buf = bytearray()
        self.transport = None
        self.pending: set[int] = set()
        self.waiting = False  # a request of this connection is being served
        self.close_after = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None
        if self.pending:
            self.server.drop_connection(self)

    def data_received(self, data: bytes):
        self.buf += data
        if not self.waiting:
            self._parse()

    def _parse(self) -> None:
        while not self.waiting and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self._error(413)
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._error(400)
                return
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            start = end + 4
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body, used = _dechunk(self.buf, start)
                if body is None:
                    return  # incomplete
                del self.buf[:used]
            else:
                try:
                    n = int(headers.get("content-length", "0") or 0)
                except ValueError:
                    self._error(400)
                    return
                if n > MAX_BODY:
                    self._error(413)
                    return
                if len(self.buf) < start + n:
                    return
                body = bytes(self.buf[start:start + n])
                del self.buf[:start + n]
            conn_hdr = headers.get("connection", "").lower()
            self.close_after = conn_hdr == "close" or (version == "HTTP/1.0" and conn_hdr != "keep-alive")
            self.waiting = True
            self.server.route(self, method.upper(), target, body, headers)

    def _error(self, code: int) -> None:
        self.close_after = True
        self.send(code, json.dumps({"error": {"message": _REASONS.get(code, "error")}}).encode())

    def send(self, code: int, body: bytes, extra: str = "", content_type: str = "application/json") -> None:
        t = self.transport
        self.waiting = False
        if t is None or t.is_closing():
            return
        head = (f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n{extra}"
                f"Connection: {'close' if self.close_after else 'keep-alive'}\r\n\r\n").encode()
        t.write(head + body)
        if self.close_after:
            t.close()
            return
        if self.buf:
            self.server.loop.call_soon(self._parse)


def _dechunk(buf: bytearray, pos: int):
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(bytes(buf[pos:eol]).split(b";")[0] or b"0", 16)
        pos = eol + 2
        if size == 0:
            trail = buf.find(b"\r\n", pos)
            if trail < 0:
                return None, 0
            return bytes(out), trail + 2
        if len(buf) < pos + size + 2:
            return None, 0
        out += buf[pos:pos + size]
        pos += size + 2


def load_seed_instructions(path: str) -> set[str]:
    """Normalised seed instructions from a Self-Instruct / plain JSONL (or a text file, one per line)."""
    out: set[str] = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            ins = row.get("instruction") or row.get("prompt") or ""
            if ins:
                out.add(_norm(ins))
        else:
            out.add(_norm(line))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (127.0.0.1 or ::1)")
    p.add_argument("--port", type=int, default=0, help="0 = any free port (printed as READY <port>)")
    p.add_argument("--port-file", help="also write the port here once listening")
    p.add_argument("--slots", type=int, default=256, help="requests served at once; more wait in a queue")
    p.add_argument("--latency", type=float, default=2.0, help="seconds per request (the median for heavy)")
    p.add_argument("--trace", help="append one line per started request (kind, start s, latency s, id) here")
    p.add_argument("--latency-model", choices=["fixed", "heavy", "zero"], default="fixed")
    p.add_argument("--tail-frac", type=float, default=0.05, help="heavy: share of requests in the tail")
    p.add_argument("--tail-mult", type=float, default=10.0, help="heavy: tail latency / median")
    p.add_argument("--refuse-above", type=int, default=0, help="answer 429 when this many are in flight (0 = never)")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds sent with a 429")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seed-file", action="append", help="seed tasks (JSONL); prompts showing other instructions "
                   "count as machine-generated in-context instructions (repeatable)")
    p.add_argument("--batch-delay", type=float, default=1.0, help="seconds from creating a batch to its end")
    p.add_argument("--batch-create-delay", type=float, default=0.0,
                   help="answer a batch creation this much later (the batch exists at once)")
    p.add_argument("--batch-refuse-frac", type=float, default=0.0, help="batch lines answered HTTP 400")
    p.add_argument("--batch-expire-frac", type=float, default=0.0, help="batch lines expired on first submission")
    p.add_argument("--model", default="sim-teacher")
    p.add_argument("--max-seconds", type=float, default=6 * 3600, help="exit after this long (a safety bound)")
    a = p.parse_args(argv)
    if a.host not in ("127.0.0.1", "::1", "localhost"):
        p.error("only loopback addresses")
    if a.slots < 1:
        p.error("--slots must be >= 1")
    return a


async def serve(args) -> None:
    server = Server(args)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Conn(server), args.host, args.port, backlog=4096, reuse_address=True)
    port = srv.sockets[0].getsockname()[1]
    if args.port_file:
        Path(args.port_file).write_text(str(port))
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    except asyncio.TimeoutError:
        pass
    srv.close()


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        import uvloop  # type: ignore
        uvloop.install()
    except Exception:  # noqa: BLE001
        pass
    asyncio.run(serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
