"""A procedurally generated multi-task suite for the offline demo (no downloads needed).

Every task is a yes/no question about one templated English sentence, so all tasks share the
verbalizers ("yes", "no") and the accuracy metric. The tasks are built so that multi-task prompt
transfer has something to show: some source tasks conflict (`synth-sentiment` and
`synth-sentiment-flip` give opposite answers for the same sentences), and each target task agrees
with one source (it asks the same thing about differently worded sentences), so a prompt that
keeps the right source knowledge transfers well and one that averages the conflict does not.

Generation is deterministic: each (sentence family, split, seed) gets its own `random.Random`
seeded by a CRC32 (stable across processes, unlike `hash`), and train/dev/test use different seeds.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from .tasks import Example, OfficialSizes, Task, register

VERBALIZERS = ("yes", "no")
SPLIT_SIZES = {"train": 2000, "dev": 200, "test": 400}


def _words(s: str) -> list[str]:
    return s.split()


# --- word lists (multi-word entries use "_" for spaces) ----------------------------------------------
POS_ADJ = _words("wonderful excellent superb delightful fantastic lovely charming brilliant "
                 "outstanding pleasant amazing great perfect memorable impressive enjoyable marvelous")
NEG_ADJ = _words("awful terrible disappointing dreadful boring horrible mediocre dull "
                 "unpleasant tedious forgettable poor miserable clumsy lifeless")
POS_FOOD = POS_ADJ + _words("delicious tasty fresh flavorful")  # food-only words, not for films
NEG_FOOD = NEG_ADJ + _words("bland stale greasy soggy")
POS_VERB = _words("loved enjoyed adored liked admired appreciated")
NEG_VERB = _words("hated disliked regretted resented endured tolerated")
FOODS = _words("soup pasta pizza salad curry steak bread cake burger noodles risotto pie fish sandwich "
               "omelette dessert coffee tea")
VENUES = _words("cafe restaurant bistro diner bakery tavern pub canteen")
PLACE_ADJ = _words("small busy quiet new old little crowded famous local cozy")
STREETS = _words("Main_Street the_corner the_harbor the_old_square the_station the_market High_Street")
STAFF = _words("service waiter staff music atmosphere chef decor")
GENRES = _words("horror comedy drama thriller romance western mystery fantasy documentary war")
PEOPLE = _words("teacher farmer pilot doctor baker sailor painter student detective soldier nurse "
                "musician lawyer gardener journalist")
MOVIE_PARTS = _words("acting plot ending script soundtrack dialogue story photography")
ANIMALS = _words("dog cat horse rabbit fox owl goat duck deer squirrel sheep parrot turtle mouse frog "
                 "cow pig lion tiger bear wolf donkey hamster goose")
OBJECTS = _words("lamp chair bicycle umbrella suitcase bottle kettle book ladder basket wallet candle "
                 "guitar backpack clock blanket bucket hammer teapot mirror vase radio jacket")
RELATIVES = _words("brother sister uncle aunt cousin neighbor grandmother grandfather friend mother "
                   "father roommate")
AREAS = _words("garden barn river park forest road kitchen field bridge fence lake porch yard station")
SEEING = _words("saw noticed photographed described mentioned drew found painted")
PLACES = _words("kitchen garage library office garden school workshop studio hall bakery")
# (past, base, objects): verbs carry their own objects so every sentence makes sense
VERBS = [("cooked", "cook", _words("dinner the_soup a_large_meal the_rice")),
         ("painted", "paint", _words("the_fence the_door a_portrait the_walls")),
         ("wrote", "write", _words("a_letter the_report a_short_story an_email")),
         ("fixed", "fix", _words("the_sink the_bicycle the_roof the_printer")),
         ("cleaned", "clean", _words("the_windows the_floor the_car the_oven")),
         ("built", "build", _words("a_shed a_bookshelf a_bird_house a_table")),
         ("sold", "sell", _words("the_old_car the_piano some_books the_house")),
         ("visited", "visit", _words("the_museum the_zoo the_old_castle the_lake")),
         ("washed", "wash", _words("the_dishes the_dog the_curtains the_truck")),
         ("bought", "buy", _words("new_shoes a_laptop fresh_bread a_small_boat")),
         ("planted", "plant", _words("tomatoes a_young_tree some_roses the_seeds")),
         ("carried", "carry", _words("the_boxes the_groceries the_chairs the_luggage")),
         ("sang", "sing", _words("a_song the_anthem a_lullaby two_hymns")),
         ("drove", "drive", _words("the_truck a_bus the_tractor the_van")),
         ("taught", "teach", _words("a_class the_children a_lesson the_new_recruits"))]
PAST_TIMES = _words("Yesterday Last_night Two_days_ago Last_summer Earlier_today Last_year On_Monday "
                    "A_week_ago")
FUTURE_TIMES = _words("Tomorrow Next_week Tonight Next_summer In_two_days Next_year Soon Later_today")
PAST_PHRASES = _words("last_weekend a_long_time_ago back_in_1998 when_I_was_a_child last_month "
                      "two_years_ago over_the_holidays last_spring")
FUTURE_PHRASES = _words("next_weekend later_this_year in_a_few_days after_the_holidays next_month "
                        "in_two_years this_coming_spring before_long")
COMPANY = _words("together at_home with_the_kids in_the_rain for_fun as_a_team without_help for_the_party")
COLORS = _words("red blue black white silver green gray yellow pink brown")
PRODUCTS = _words("blender toaster kettle vacuum heater projector printer lamp drill keyboard mouse "
                  "charger speaker grill fan microwave monitor camera watch scooter")
PARTS = _words("handle battery lid cable switch button screen plug motor case")
PROD_POS = _words("sturdy reliable solid comfortable durable sleek well-made excellent great superb amazing "
                  "fantastic impressive")
PROD_NEG = _words("flimsy unreliable cheap uncomfortable fragile clunky useless terrible awful poor "
                  "disappointing horrible mediocre")
WORKS_POS = ["works perfectly", "does exactly what it promises", "exceeded my expectations",
             "still runs like new", "was worth every penny", "arrived quickly and works great"]
WORKS_NEG = ["broke after a week", "stopped working after two days", "was a complete waste of money",
             "arrived damaged", "never worked properly", "fell apart almost immediately"]
REC_POS = ["I would buy it again", "I recommend it to everyone", "my family loves it", "five stars"]
REC_NEG = ["I am returning it", "I want my money back", "avoid this one", "one star"]


def _pick(rng: random.Random, words: list[str]) -> str:
    return rng.choice(words).replace("_", " ")


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _low(s: str) -> str:
    return s[0].lower() + s[1:]


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


# --- sentence generators: (rng, label) -> sentence; the label is fully determined by the words -----
def _review(rng: random.Random, positive: bool) -> str:
    adj, food_adj, verb = (POS_ADJ, POS_FOOD, POS_VERB) if positive else (NEG_ADJ, NEG_FOOD, NEG_VERB)
    a1, a2, f1, v = _pick(rng, adj), _pick(rng, adj), _pick(rng, food_adj), _pick(rng, verb)
    food, venue, genre = _pick(rng, FOODS), _pick(rng, VENUES), _pick(rng, GENRES)
    part = _pick(rng, MOVIE_PARTS)
    return rng.choice([
        lambda: f"The {food} at the {_pick(rng, PLACE_ADJ)} {venue} was {f1}.",
        lambda: f"Our dinner at the {venue} near {_pick(rng, STREETS)} was {a1} and the "
                f"{_pick(rng, STAFF)} was {a2}.",
        lambda: f"I {v} the {food} at this {_pick(rng, PLACE_ADJ)} {venue}, it was truly {f1}.",
        lambda: f"The new {genre} film about {_a(_pick(rng, PEOPLE))} was {a1} and the {part} was {a2}.",
        lambda: f"I watched {_a(genre)} movie {_pick(rng, PAST_PHRASES)} and the {part} was {a1}.",
        lambda: f"We {v} this {genre} film; the {part} felt {a1}.",
    ])()


def _animal(rng: random.Random, has_animal: bool) -> str:
    noun = _pick(rng, ANIMALS if has_animal else OBJECTS)
    rel, area, when = _pick(rng, RELATIVES), _pick(rng, AREAS), _pick(rng, PAST_PHRASES + FUTURE_PHRASES)
    # tense and the other words are drawn independently of the label: only the noun decides it
    return rng.choice([
        lambda: f"My {rel} {_pick(rng, SEEING)} {_a(noun)} near the {area} {_pick(rng, PAST_PHRASES)}.",
        lambda: f"There was {_a(noun)} by the {area} when my {rel} came home.",
        lambda: f"The {_pick(rng, PLACE_ADJ)} {noun} stayed beside the {area} all afternoon.",
        lambda: f"Our {rel} keeps talking about the {noun} behind the {area}.",
        lambda: f"My {rel} will draw {_a(noun)} in the {_pick(rng, PLACES)} {when}.",
    ])()


def _vo(rng: random.Random) -> tuple[str, str, str]:
    past, base, objs = rng.choice(VERBS)
    return past, base, _pick(rng, objs)


def _past(rng: random.Random, past: bool) -> str:
    vp, vb, obj = _vo(rng)
    who, where = _pick(rng, PEOPLE), _pick(rng, PLACES)
    time = _pick(rng, PAST_TIMES if past else FUTURE_TIMES)
    # the future auxiliaries overlap with synth-tense's (partly): related, not identical, surface cues
    verb = vp if past else rng.choice(["will ", "will ", "is going to ", "plans to "]) + vb
    # one template has no time word, so the verb form alone must carry the label
    return rng.choice([
        lambda: f"{time}, the {who} {verb} {obj} in the {where}.",
        lambda: f"The {who} {verb} {obj} {_low(time)}.",
        lambda: f"In the {where}, the {who} {verb} {obj}.",
    ])()


def _tense(rng: random.Random, past: bool) -> str:
    vp, vb, obj = _vo(rng)
    rel = _pick(rng, RELATIVES)
    when = _pick(rng, PAST_PHRASES if past else FUTURE_PHRASES)
    verb = vp if past else rng.choice(["will ", "is going to ", "is about to ", "hopes to "]) + vb
    return rng.choice([
        lambda: f"My {rel} {verb} {obj} {when}.",
        lambda: f"{_cap(when)}, my {rel} {verb} {obj}.",
        lambda: f"According to my {rel}, we {vp if past else 'are going to ' + vb} {obj} "
                f"{_pick(rng, COMPANY)}.",
    ])()


def _product(rng: random.Random, good: bool) -> str:
    prod, part = _pick(rng, PRODUCTS), _pick(rng, PARTS)
    adj, works, rec = (PROD_POS, WORKS_POS, REC_POS) if good else (PROD_NEG, WORKS_NEG, REC_NEG)
    a, w, r = _pick(rng, adj), rng.choice(works), rng.choice(rec)
    v = _pick(rng, POS_VERB if good else NEG_VERB)  # shared with synth-sentiment: the tasks agree
    return rng.choice([
        lambda: f"This {prod} {w} and the {part} feels {a}.",
        lambda: f"I bought this {prod} for my {_pick(rng, RELATIVES)} {_pick(rng, PAST_PHRASES)}; it {w}.",
        lambda: f"The {part} on this {prod} is {a}, {r}.",
        lambda: f"My new {_pick(rng, COLORS)} {prod} {w}. {_cap(r)}.",
        lambda: f"We {v} the {_pick(rng, COLORS)} {prod}; the {part} is {a}.",
    ])()


@dataclass(frozen=True)
class _Spec:
    name: str
    role: str  # "source" or "target"
    question: str
    family: str  # sentence generator; tasks sharing a family share sentences (same seed stream)
    make: Callable[[random.Random, bool], str]
    flip: bool = False  # answer "yes" when the generator's label is False


_SPECS = (
    _Spec("synth-sentiment", "source", "Is this review positive?", "review", _review),
    _Spec("synth-sentiment-flip", "source", "Is this review negative?", "review", _review, flip=True),
    _Spec("synth-animal", "source", "Does the sentence mention an animal?", "animal", _animal),
    _Spec("synth-past", "source", "Did this already happen?", "past", _past),
    _Spec("synth-product", "target", "Would the customer recommend this product?", "product", _product),
    _Spec("synth-tense", "target", "Is this sentence about the past?", "tense", _tense),
)
SPECS = {s.name: s for s in _SPECS}
SOURCE_TASKS = tuple(s.name for s in _SPECS if s.role == "source")
TARGET_TASKS = tuple(s.name for s in _SPECS if s.role == "target")
RELATIONS: dict[tuple[str, str], str] = {
    ("synth-sentiment", "synth-sentiment-flip"): "conflicts (same sentences, opposite answers)",
    ("synth-sentiment", "synth-product"): "agrees (positive wording -> yes)",
    ("synth-sentiment-flip", "synth-product"): "conflicts (positive wording -> no)",
    ("synth-past", "synth-tense"): "agrees (past tense -> yes)",
}


def _rng(family: str, split: str, seed: int) -> random.Random:
    # CRC32 rather than hash(): Python salts str hashes per process, which would break determinism
    return random.Random(zlib.crc32(f"synth|{family}|{split}|{seed}".encode()))


def generate(name: str, split: str, seed: int = 0, n: int | None = None) -> list[Example]:
    """Generate `n` examples (default `SPLIT_SIZES[split]`) of task `name`, exactly half "yes"."""
    spec = SPECS[name]
    n = SPLIT_SIZES[split] if n is None else n
    rng = _rng(spec.family, split, seed)
    labels = [i < n // 2 for i in range(n)]
    rng.shuffle(labels)  # balanced by construction, in random order
    out = []
    for label in labels:
        sentence = spec.make(rng, label)
        answer = label != spec.flip
        out.append(Example(input=f"{spec.question} {sentence}", target=VERBALIZERS[0 if answer else 1],
                           meta={"sentence": sentence, "family": spec.family}))
    return out


def _loader(name: str) -> Callable[[str, str | None, int], list[Example]]:
    def load(split: str, data_dir: str | None, seed: int) -> list[Example]:
        return generate(name, split, seed)  # data_dir is unused: everything is generated
    return load


def describe() -> str:
    """A markdown table of the suite: name, role, question and relations to other tasks."""
    rows = ["| task | role | question | relation |", "|---|---|---|---|"]
    for s in _SPECS:
        rel = "; ".join(f"{r.split(' ')[0]} with `{b if a == s.name else a}`"
                        for (a, b), r in RELATIONS.items() if s.name in (a, b)) or "independent"
        rows.append(f"| `{s.name}` | {s.role} | {s.question} | {rel} |")
    return "\n".join(rows)


for _s in _SPECS:
    register(Task(name=_s.name, loader=_loader(_s.name), metrics=("accuracy",), verbalizers=VERBALIZERS,
                  description=f"{_s.role} task: {_s.question} (synthetic '{_s.family}' sentences)",
                  suite="synth", max_target_tokens=2, convention="generated",
                  official=OfficialSizes(dict(SPLIT_SIZES))))
