"""A small built-in data set, generated from templates, so that everything runs offline.

Each task gets labels a model can learn from the text alone:
  sst   five graded sentiment words (dreadful < bad < ordinary < good < superb) in templates;
  para  paraphrases rewrite a sentence with synonyms and a different word order (active,
        fronted time, passive); non-paraphrases change the subject, verb or object;
  sts   two sentences share k of five slots (subject, verb, object, place, time), each
        kept slot possibly rephrased by a synonym; the score is k (0-5).
GLUE names map onto these: sst2 is the binary sst (no neutral class), qqp/mrpc/rte use
para and stsb uses sts. Labels are balanced across classes, texts are unique within a task
(train and dev never share a text) and the result depends on nothing but the task name.
"""

from __future__ import annotations

import random

from berter.errors import DataError
from berter.tasks import Example

SIZES = {"train": 400, "dev": 120}

# --- sentiment ---------------------------------------------------------------------------
SENTIMENT_WORDS = (
    ("dreadful", "awful", "terrible", "horrible", "atrocious", "unbearable"),
    ("bad", "weak", "dull", "poor", "tiresome", "disappointing"),
    ("ordinary", "average", "passable", "unremarkable", "middling", "so-so"),
    ("good", "nice", "enjoyable", "pleasant", "solid", "likeable"),
    ("superb", "brilliant", "wonderful", "outstanding", "magnificent", "dazzling"),
)
FILM_PARTS = (
    "film", "movie", "story", "script", "cast", "ending", "soundtrack", "plot",
    "direction", "dialogue", "acting", "premise",
)  # fmt: skip
ASIDES = (
    "to be honest", "all things considered", "in my opinion", "frankly", "on the whole",
    "if you ask me",
)  # fmt: skip
SENTIMENT_TEMPLATES = (
    "the {part} was {adj} .",
    "{aside} , the {part} felt {adj} .",
    "a {adj} {part} , {aside} .",
    "what a {adj} {part} .",
    "the {part} is {adj} from start to finish .",
    "i thought the {part} was {adj} and the {part2} was {adj2} .",
)

# --- sentences for para and sts: each slot is a list of synonym groups --------------------
SUBJECTS = (
    ("the boy", "the young lad"), ("the doctor", "the physician"),
    ("the teacher", "the instructor"), ("the chef", "the cook"), ("the pilot", "the aviator"),
    ("the student", "the pupil"), ("the lawyer", "the attorney"), ("the sailor", "the seaman"),
    ("my neighbour", "the woman next door"), ("the old farmer", "the elderly farmer"),
)  # fmt: skip
VERBS = (  # (past tense, past participle) per synonym
    (("bought", "bought"), ("purchased", "purchased")),
    (("fixed", "fixed"), ("repaired", "repaired")),
    (("found", "found"), ("discovered", "discovered")),
    (("built", "built"), ("constructed", "constructed")),
    (("chose", "chosen"), ("selected", "selected"), ("picked", "picked")),
    (("cleaned", "cleaned"), ("washed", "washed")),
    (("hid", "hidden"), ("concealed", "concealed")),
    (("sold", "sold"),),
    (("painted", "painted"),),
    (("stole", "stolen"), ("took", "taken")),
)
OBJECTS = (
    ("the car", "the automobile"), ("the sofa", "the couch"), ("the present", "the gift"),
    ("the photo", "the picture"), ("the bicycle", "the bike"), ("the house", "the home"),
    ("the jacket", "the coat"), ("the telephone", "the phone"), ("the boat", "the little ship"),
    ("the painting", "the artwork"),
)  # fmt: skip
PLACES = (
    ("in the park", "at the park"), ("in the kitchen", "inside the kitchen"),
    ("at the station", "at the train station"), ("in the garden", "out in the garden"),
    ("by the river", "near the river"), ("in the city", "downtown"),
    ("on the beach", "by the sea"), ("at the market", "at the marketplace"),
)  # fmt: skip
TIMES = (
    ("yesterday", "the day before"), ("this morning", "earlier today"),
    ("last week", "a week ago"), ("on monday", "on monday"), ("at night", "after dark"),
    ("in the summer", "during the summer"),
)  # fmt: skip
SLOTS = (SUBJECTS, VERBS, OBJECTS, PLACES, TIMES)


def _sentiment(rng: random.Random, label: int) -> str:
    words = SENTIMENT_WORDS[label]
    part, part2 = rng.sample(FILM_PARTS, 2)
    adj, adj2 = rng.sample(words, 2)
    return rng.choice(SENTIMENT_TEMPLATES).format(
        part=part, part2=part2, adj=adj, adj2=adj2, aside=rng.choice(ASIDES)
    )


def _other(rng: random.Random, slot: tuple, group: int) -> int:
    """A different synonym group of the same slot."""
    return rng.choice([g for g in range(len(slot)) if g != group])


def _render(rng: random.Random, groups: list[int], form: str) -> str:
    """A sentence from slot groups, each word picked among its synonyms, in a given form."""
    subj, (past, participle), obj, place, time = (
        rng.choice(slot[g]) for slot, g in zip(SLOTS, groups, strict=True)
    )
    if form == "active":
        return f"{subj} {past} {obj} {place} {time} ."
    if form == "fronted":
        return f"{time} , {subj} {past} {obj} {place} ."
    return f"{obj} was {participle} by {subj} {place} {time} ."  # passive


def _paraphrase(rng: random.Random, label: int) -> tuple[str, str]:
    groups = [rng.randrange(len(slot)) for slot in SLOTS]
    other = list(groups)
    if label == 0:  # change who, what was done, or to what
        k = rng.randrange(3)
        other[k] = _other(rng, SLOTS[k], groups[k])
    forms = ("active", "fronted", "passive")
    return _render(rng, groups, rng.choice(forms)), _render(rng, other, rng.choice(forms))


def _similar(rng: random.Random, kept: int) -> tuple[str, str]:
    groups = [rng.randrange(len(slot)) for slot in SLOTS]
    keep = set(rng.sample(range(len(SLOTS)), kept))
    other = [g if k in keep else _other(rng, SLOTS[k], g) for k, g in enumerate(groups)]
    return _render(rng, groups, "active"), _render(rng, other, rng.choice(("active", "fronted")))


def _generate(kind: str) -> dict[str, list[Example]]:
    """Both splits of one demo task from one seeded stream; texts are unique across splits."""
    rng = random.Random(f"berter-demo/{kind}")
    classes = {
        "sst": [0, 1, 2, 3, 4],
        "sst2": [0, 1, 3, 4],
        "para": [0, 1],
        "sts": [0, 1, 2, 3, 4, 5],
    }[kind]
    seen: set[tuple[str, str | None]] = set()
    out: dict[str, list[Example]] = {}
    for split, size in SIZES.items():
        examples = []
        for i in range(size):
            cls = classes[i % len(classes)]
            while True:
                if kind in ("sst", "sst2"):
                    text_a, text_b = _sentiment(rng, cls), None
                elif kind == "para":
                    text_a, text_b = _paraphrase(rng, cls)
                else:
                    text_a, text_b = _similar(rng, cls)
                if (text_a, text_b) not in seen:
                    break
            seen.add((text_a, text_b))
            label = float(cls >= 3) if kind == "sst2" else float(cls)
            examples.append(Example("", text_a, text_b, label))
        rng.shuffle(examples)
        for i, ex in enumerate(examples):
            ex.id = f"demo-{kind}-{split}-{i:04d}"
        out[split] = examples
    return out


DEMO_KIND = {
    "sst": "sst", "sst2": "sst2", "para": "para", "qqp": "para", "mrpc": "para",
    "rte": "para", "sts": "sts", "stsb": "sts",
}  # fmt: skip


def demo_examples(task_name: str, split: str) -> list[Example]:
    """The demo examples of a task ("sst", "para", "sts" or a GLUE name) for train or dev."""
    if task_name not in DEMO_KIND:
        raise DataError(f"the demo data has no task {task_name!r} (has: {', '.join(DEMO_KIND)})")
    if split not in SIZES:
        raise DataError(f"the demo data has no split {split!r} (has: {', '.join(SIZES)})")
    return _generate(DEMO_KIND[task_name])[split]
