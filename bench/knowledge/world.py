"""A seeded world of fictional entities, rendered as prose documents, with questions about every fact.

    .venv/bin/python bench/knowledge/world.py            # rewrites bench/knowledge/data/{a,b}/ (deterministic)

The benchmark for "documents → knowledge" (docs/knowledge.md). Two document sets, generated differently so
that a documents → training-data path cannot be tuned to one generator:

- **a** (tuning set): companies, people, products, towns and festivals; one Markdown file per kind, a `##`
  section per entity, prose whose sentences vary in structure (active, passive, fronted clauses, pronouns and
  descriptions instead of the name, two facts in one sentence) and carry a few fact-free sentences.
  Questions: `valid.jsonl` (for tuning) and `test.jsonl` (final figures only), one per fact each, with
  disjoint phrasing families.
- **b** (check set, never tuned on): ships, beetle species and bands, written as a harbour register with
  `Key: value` lists, a field guide with appositions, and headingless paragraphs; `test.jsonl` only.

Every name is made of syllables drawn by the seed, so no pretrained model can know a fact beforehand.
Questions are phrased in ways the documents never use, and `heldout.py` checks by code that no test question's
phrasing occurs in whatever training data a pipeline generated. Answers are scored by the `contains` metric
(the reference value occurs as whole words in the answer).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "st", "t", "tr",
          "v", "w", "z", "th", "sk", "v", "l", "m"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ae", "io"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "st", "x", "ll", "v"]
PLACE_ENDINGS = ["mere", "vik", "holm", "dale", "ton", "stead", "wick", "burg", "ford", "by"]
FIRST_NAMES = ["Ilsa", "Tomas", "Maren", "Oskar", "Lenna", "Bram", "Yara", "Corin", "Edda", "Falk", "Greta", "Hale",
               "Ines", "Jory", "Kaia", "Luca", "Mira", "Nils", "Oona", "Pavel", "Rhea", "Soren", "Tilde", "Ulla",
               "Vito", "Wren", "Anouk", "Dario", "Elin", "Juno", "Katja", "Leif", "Noor", "Orla", "Piet", "Runa"]
FEMININE = {"Ilsa", "Maren", "Lenna", "Yara", "Edda", "Greta", "Ines", "Kaia", "Mira", "Oona", "Rhea", "Tilde", "Ulla",
            "Wren", "Anouk", "Elin", "Juno", "Katja", "Noor", "Orla", "Runa"}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


class Names:
    """Unique made-up words from syllables (seeded); never two entities with one name."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: int = 2, ending: str = "") -> str:
        for _ in range(1000):
            w = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS)
                        for _ in range(syllables)) + ending
            w = w.capitalize()
            if 4 <= len(w) <= 12 and w.lower() not in self.used:
                self.used.add(w.lower())
                return w
        raise RuntimeError("name space exhausted")

    def person(self) -> tuple[str, str]:
        first = self.rng.choice(FIRST_NAMES)
        return f"{first} {self.word(2)}", "she" if first in FEMININE else "he"

    def place(self) -> str:
        return self.word(1, self.rng.choice(PLACE_ENDINGS))


@dataclass
class Entity:
    kind: str
    name: str
    facts: dict[str, str]
    pronoun: str = "it"
    extra: dict[str, str] = field(default_factory=dict)  # rendering helpers (e.g. a product's category noun)


# ---------------------------------------------------------------- world a: five kinds, encyclopedic sections

INDUSTRIES = ["ceramic water filters", "bicycle gears", "weather balloons", "solar kettles", "wooden toys",
              "hearing aids", "paper lanterns", "glass insulators", "wool blankets", "garden robots",
              "pipe organs", "fishing nets", "snow chains", "brass telescopes", "beeswax candles"]
OCCUPATIONS = ["glassblower", "cartographer", "violin maker", "marine biologist", "architect", "beekeeper",
               "stonemason", "translator", "surgeon", "clockmaker", "botanist", "sculptor", "pilot", "baker"]
CATEGORIES = ["folding bicycle", "espresso grinder", "pocket radio", "rain jacket", "desk lamp", "hiking boot",
              "sewing machine", "kitchen scale", "electric kettle", "travel pillow", "camera tripod", "wall clock"]
LANDMARKS = ["salt mines", "leaning clock tower", "floating market", "copper roofs", "stone bridge", "tulip fields",
             "old lighthouse", "glass cathedral", "hot springs", "wooden windmill"]
SUFFIXES = ["Works", "Industries", "Group", "Labs", "Company", "Holdings", "Manufacturing"]
FESTIVALS = ["Lantern Festival", "Kite Fair", "Harvest Week", "Jazz Days", "Film Festival", "Cheese Market",
             "Boat Parade", "Poetry Nights", "Folk Gathering", "Chess Open"]


def world_a(rng: random.Random, per_kind: int = 10) -> list[Entity]:
    names = Names(rng)
    towns = [Entity("town", names.place(), {}) for _ in range(per_kind)]
    regions = [f"the {names.word(2)} {rng.choice(['Valley', 'Highlands', 'Coast', 'Plains', 'Islands'])}" for _ in range(4)]
    companies = []
    for _ in range(per_kind):
        founder, _ = names.person()
        companies.append(Entity("company", f"{names.word(2)} {rng.choice(SUFFIXES)}", {
            "founded": str(rng.randint(1850, 1995)), "headquarters": rng.choice(towns).name, "founder": founder,
            "industry": rng.choice(INDUSTRIES)}))
    for town in towns:
        town.facts = {"region": rng.choice(regions), "population": str(rng.randint(2, 95) * 100 + rng.randint(1, 99)),
                      "river": names.word(2), "landmark": rng.choice(LANDMARKS)}
    people = []
    for _ in range(per_kind):
        name, pronoun = names.person()
        people.append(Entity("person", name, {
            "born": str(rng.randint(1930, 2000)), "birthplace": rng.choice(towns).name,
            "occupation": rng.choice(OCCUPATIONS), "employer": rng.choice(companies).name}, pronoun))
    products = []
    for _ in range(per_kind):
        category = rng.choice(CATEGORIES)
        products.append(Entity("product", f"{names.word(2)} {rng.randint(2, 90)}", {
            "maker": rng.choice(companies).name, "launched": str(rng.randint(1990, 2021)),
            "price": str(rng.randint(12, 480)), "category": category}))
    events = []
    for _ in range(per_kind):
        host = rng.choice(towns)
        events.append(Entity("event", f"{names.word(2)} {rng.choice(FESTIVALS)}", {
            "city": host.name, "first_held": str(rng.randint(1890, 2010)), "month": rng.choice(MONTHS),
            "organiser": rng.choice(companies).name}))
    return companies + people + products + towns + events


# Sentence plans: (attributes covered, template). {S} is the subject reference (the name, a pronoun or a
# description, chosen per sentence), {P} its possessive; attribute values by name. The first sentence of a
# section always uses the name.
PLANS_A: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "company": [
        (("founded",), "{S} was founded in {founded}."),
        (("founded",), "{S} dates back to {founded}, when it opened its first workshop."),
        (("founded",), "The history of {N} began in {founded}."),
        (("founder",), "{S} was set up by {founder}."),
        (("founder",), "{founder} started {N} with a small loan from relatives."),
        (("founder", "founded"), "{founder} founded {N} in {founded}."),
        (("founded", "founder"), "Founded in {founded} by {founder}, {S} grew slowly at first."),
        (("headquarters",), "{S} is headquartered in {headquarters}."),
        (("headquarters",), "{P} head office is in {headquarters}."),
        (("headquarters",), "From its base in {headquarters}, {S} ships to customers in many countries."),
        (("industry",), "{S} makes {industry}."),
        (("industry",), "{S} is best known for its {industry}."),
        (("industry", "headquarters"), "{S} manufactures {industry} at its plant in {headquarters}."),
    ],
    "person": [
        (("born", "birthplace"), "{S} was born in {birthplace} in {born}."),
        (("born",), "{S} was born in {born}."),
        (("birthplace",), "{S} grew up in {birthplace}, where {p} still lives."),
        (("birthplace",), "{P} hometown is {birthplace}."),
        (("born", "occupation"), "Born in {born}, {S} trained as a {occupation}."),
        (("occupation",), "{S} works as a {occupation}."),
        (("occupation",), "By profession, {S} is a {occupation}."),
        (("employer",), "{S} works for {employer}."),
        (("employer",), "{S} has spent most of {pp} career at {employer}."),
        (("employer", "occupation"), "At {employer}, {S} is employed as a {occupation}."),
    ],
    "product": [
        (("maker",), "The {N} is made by {maker}."),
        (("maker",), "{maker} produces the {N}."),
        (("category", "maker"), "The {N} is a {category} from {maker}."),
        (("category",), "The {N} is a {category}."),
        (("category",), "{S} is a {category} with a short warranty."),
        (("launched",), "{S} was launched in {launched}."),
        (("launched",), "{S} first went on sale in {launched}."),
        (("launched", "price"), "Launched in {launched}, {S} sells for {price} euros."),
        (("price",), "{S} costs {price} euros."),
        (("price",), "{P} price is {price} euros."),
    ],
    "town": [
        (("region",), "{S} is a town in {region}."),
        (("region",), "{S} lies in {region}."),
        (("population",), "{S} has a population of {population}."),
        (("population",), "About {population} people live in {N}."),
        (("river",), "{S} lies on the {river} River."),
        (("river",), "The {river} River flows through {N}."),
        (("landmark",), "{S} is known for its {landmark}."),
        (("landmark", "river"), "Visitors come to {N} for its {landmark} and walks along the {river} River."),
    ],
    "event": [
        (("city",), "{S} takes place in {city} every year."),
        (("city",), "{S} is held in {city}."),
        (("first_held",), "{S} was first held in {first_held}."),
        (("first_held",), "The first edition of {N} took place in {first_held}."),
        (("month",), "{S} is held each {month}."),
        (("month", "city"), "Every {month}, {N} fills the streets of {city}."),
        (("organiser",), "{S} is organised by {organiser}."),
        (("organiser",), "{organiser} runs {N}."),
        (("first_held", "organiser"), "Since {first_held}, {S} has been organised by {organiser}."),
    ],
}
DESCRIPTIONS = {"company": ["The company", "The firm"], "product": ["The product", "It"], "town": ["The town"],
                "event": ["The festival", "The event"], "person": []}
FILLER_A = {
    "company": ["{P} logo shows a heron.", "{S} has won several design awards.", "{S} publishes a yearly report."],
    "person": ["{S} enjoys long walks.", "{S} speaks three languages.", "Friends describe {o} as patient."],
    "product": ["{S} comes in three colours.", "Reviewers praised {P} simple design."],
    "town": ["{S} has a weekly market.", "{P} old town is popular with tourists."],
    "event": ["Tickets usually sell out within days.", "{S} attracts visitors from abroad."],
}
TITLES_A = {"company": "Companies", "person": "People", "product": "Products", "town": "Towns", "event": "Festivals"}


def _pronouns(entity: Entity) -> dict[str, str]:
    return {"she": {"p": "she", "o": "her", "pp": "her"}, "he": {"p": "he", "o": "him", "pp": "his"}}.get(
        entity.pronoun, {"p": "it", "o": "it", "pp": "its"})


def _reference(entity: Entity, rng: random.Random, first: bool) -> tuple[str, str]:
    """(subject, possessive) for one sentence: the name, or (after the first sentence) a pronoun or description."""
    name = f"the {entity.name}" if entity.kind == "product" else entity.name
    if first:
        return name, possessive(name)
    choice = rng.random()
    pronoun = _pronouns(entity)
    if choice < 0.45:
        return name, possessive(name)
    if choice < 0.75 or not DESCRIPTIONS[entity.kind]:
        return pronoun["p"], pronoun["pp"]
    description = rng.choice(DESCRIPTIONS[entity.kind])
    return description.lower(), ("its" if description == "It" else description.lower() + "'s")


def possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def _articles(text: str) -> str:
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def _capitalise(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def render(entity: Entity, plans: list[tuple[tuple[str, ...], str]], fillers: list[str], rng: random.Random) -> str:
    """Sentences covering every fact exactly once, in varied structures, plus 0-1 fact-free sentences."""
    todo = list(entity.facts)
    rng.shuffle(todo)
    chosen = []
    while todo:
        options = [p for p in plans if todo[0] in p[0] and set(p[0]) <= set(todo)]
        attrs, template = rng.choice(options)
        chosen.append(template)
        todo = [a for a in todo if a not in attrs]
    if fillers and rng.random() < 0.6:
        chosen.insert(rng.randint(1, len(chosen)), rng.choice(fillers))
    # The first sentence must name the subject: put first one that mentions {S} or {N} as its subject.
    first = next((i for i, t in enumerate(chosen) if t.startswith(("{S}", "The {N}"))), 0)
    chosen.insert(0, chosen.pop(first))
    sentences = []
    for i, template in enumerate(chosen):
        subject, possessive = _reference(entity, rng, first=i == 0)
        pro = _pronouns(entity)
        name = entity.name
        text = template.format(S=subject, P=possessive, N=name, p=pro["p"], o=pro["o"], pp=pro["pp"], **entity.facts)
        sentences.append(_capitalise(_articles(text)))
    return " ".join(sentences)


def documents_a(entities: list[Entity], rng: random.Random) -> dict[str, str]:
    docs = {}
    for kind, title in TITLES_A.items():
        sections = [f"# {title}\n"]
        for entity in (e for e in entities if e.kind == kind):
            sections.append(f"## {entity.name}\n\n{render(entity, PLANS_A[kind], FILLER_A[kind], rng)}\n")
        docs[f"{title.lower()}.md"] = "\n".join(sections)
    return docs


# Questions. Two disjoint phrasing families per attribute (valid / test), written to avoid the words and
# structures of the documents' sentences (checked against generated training data by heldout.py).
QUESTIONS_A: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "company": {
        "founded": (["{N} got going in which year?", "{N} opened for business in which year?"],
                    ["Which year marks the beginning of {N}?", "Since which year has {N} existed?"]),
        "founder": (["Whom should we credit with setting up {N}?", "{N} owes its existence to which person?"],
                    ["Which individual created {N}?", "Name the person behind the creation of {N}."]),
        "headquarters": (["Which city is home to the head office of {N}?", "{N} runs its business from which town?"],
                         ["Where would one find the main offices of {N}?", "{N} is based out of which town?"]),
        "industry": (["What kind of goods come out of {N}?", "Customers buy which goods from {N}?"],
                     ["Which products is {N} in the business of making?", "What line of products does {N} sell?"]),
    },
    "person": {
        "born": (["{N} came into the world in which year?", "What is the birth year of {N}?"],
                 ["Which year saw the birth of {N}?", "{N} entered this world in what year?"]),
        "birthplace": (["Which town does {N} come from originally?", "{N} first saw the light of day in which town?"],
                       ["Name the town where {N} was brought into the world.", "What place is the native town of {N}?"]),
        "occupation": (["What does {N} do for a living?", "What is the job of {N}?"],
                       ["What line of work is {N} in?", "Which trade does {N} practise?"]),
        "employer": (["Which organisation pays the salary of {N}?", "Who is the employer of {N}?"],
                     ["{N} is on the payroll of which company?", "For which firm does {N} do their job?"]),
    },
    "product": {
        "maker": (["Which manufacturer is behind the {N}?", "Who builds the {N}?"],
                  ["The {N} comes out of which company's factory?", "Which firm is responsible for producing the {N}?"]),
        "launched": (["The {N} reached the market in which year?", "In what year could people first buy the {N}?"],
                     ["Which year saw the release of the {N}?", "From which year on could shoppers get the {N}?"]),
        "price": (["How much money, in euros, must be paid for the {N}?", "What does a buyer pay for the {N}?"],
                  ["What is the retail price of the {N} in euros?", "How many euros must one spend to get the {N}?"]),
        "category": (["What sort of item is the {N}?", "What kind of thing is the {N}?"],
                     ["The {N} belongs to which category of goods?", "Describe in a few words what type of product the {N} is."]),
    },
    "town": {
        "region": (["In which region can {N} be found?", "{N} belongs to which region?"],
                   ["What region is home to {N}?", "Name the region that contains {N}."]),
        "population": (["How many inhabitants does {N} have?", "What is the number of residents of {N}?"],
                       ["How large is the population count of {N}?", "{N} is home to how many residents?"]),
        "river": (["Which river runs past {N}?", "Along which river is {N} built?"],
                  ["Name the river that passes {N}.", "What waterway crosses {N}?"]),
        "landmark": (["What is {N} famous for?", "What makes {N} well known?"],
                     ["What draws attention to {N}?", "{N} enjoys renown thanks to what?"]),
    },
    "event": {
        "city": (["In which town does {N} happen?", "Where do people go to attend {N}?"],
                 ["Which town hosts {N}?", "{N} is staged in which town?"]),
        "first_held": (["{N} began in which year?", "When was the inaugural {N}?"],
                       ["Which year saw the very first {N}?", "{N} has run since which year?"]),
        "month": (["In which month does {N} happen?", "At what time of year is {N}?"],
                  ["{N} is staged during which month?", "Which month should visitors plan for to see {N}?"]),
        "organiser": (["Which company puts on {N}?", "Who is behind the organisation of {N}?"],
                      ["Which firm stages {N}?", "{N} is arranged by which company?"]),
    },
}


# ---------------------------------------------------------------- world b: three other kinds, other styles

DIETS = ["pine needles", "freshwater snails", "fallen figs", "lichen", "clover seeds", "rotting bark", "aphids",
         "mushroom spores", "willow leaves", "pollen"]
ALBUM_WORDS = (["Quiet", "Paper", "Hollow", "Bright", "Velvet", "Northern", "Broken", "Silver", "Slow", "Little"],
               ["Harbours", "Machines", "Orchards", "Lanterns", "Winters", "Engines", "Gardens", "Rivers", "Clocks", "Bells"])


BAND_WORDS = ["Union", "Circus", "Orchestra", "Club", "Collective", "Brothers", "Quartet", "Machine"]


def world_b(rng: random.Random, per_kind: int = 10) -> list[Entity]:
    names = Names(rng)
    ports = [names.place() for _ in range(6)]
    regions = [f"the {names.word(2)} {rng.choice(['Marshes', 'Forest', 'Uplands', 'Delta', 'Steppe'])}" for _ in range(5)]
    cities = [names.place() for _ in range(6)]
    ships, beetles, bands = [], [], []
    for _ in range(per_kind):
        ships.append(Entity("ship", f"{names.word(2)}", {
            "launched": str(rng.randint(1870, 2015)), "home_port": rng.choice(ports), "captain": names.person()[0],
            "length": str(rng.randint(18, 240))}))
    for _ in range(per_kind):
        beetles.append(Entity("beetle", f"{names.word(2)} beetle", {
            "discoverer": names.person()[0], "habitat": rng.choice(regions), "diet": rng.choice(DIETS),
            "size": str(rng.randint(3, 60))}))
    for _ in range(per_kind):
        singer, _ = names.person()
        bands.append(Entity("band", f"{names.word(2)} {rng.choice(BAND_WORDS)}", {
            "formed": str(rng.randint(1960, 2015)), "city": rng.choice(cities), "singer": singer,
            "album": f"{rng.choice(ALBUM_WORDS[0])} {rng.choice(ALBUM_WORDS[1])}"}))
    return ships + beetles + bands


def documents_b(entities: list[Entity], rng: random.Random) -> dict[str, str]:
    ships = [e for e in entities if e.kind == "ship"]
    beetles = [e for e in entities if e.kind == "beetle"]
    bands = [e for e in entities if e.kind == "band"]
    register = ["# Harbour register\n", "Vessels listed by the harbour authority, with their particulars.\n"]
    for ship in ships:
        f = ship.facts
        lines = [f"- Home port: {f['home_port']}", f"- Length: {f['length']} metres", f"- Launched: {f['launched']}"]
        rng.shuffle(lines)
        prose = rng.choice([
            "The {name} is commanded by Captain {captain}.",
            "Captain {captain} has been in charge of the {name} for many years.",
            "Under Captain {captain}, the {name} carries timber and grain.",
        ]).format(name=ship.name, **f)
        keep = rng.randint(1, 3)  # some particulars are told in prose instead of the list
        told = lines[keep:]
        prose_facts = {
            "Home port": "She sails out of {home_port}.", "Length": "The vessel measures {length} metres from bow to stern.",
            "Launched": "She was launched in {launched}.",
        }
        extra = " ".join(prose_facts[line[2:].split(":")[0]].format(**f) for line in told)
        register.append(f"## {ship.name}\n\n" + "\n".join(lines[:keep]) + f"\n\n{prose} {extra}".rstrip() + "\n")
    guide = ["# Field guide to the beetles of the region\n"]
    for beetle in beetles:
        f = beetle.facts
        sentences = [
            rng.choice(["The {name}, first described by {discoverer}, lives in {habitat}.",
                        "First described by {discoverer}, the {name} is found only in {habitat}.",
                        "{discoverer} described the {name}, a native of {habitat}."]),
            rng.choice(["Adults reach {size} millimetres in length.", "It grows to about {size} millimetres.",
                        "At {size} millimetres, it is easy to spot."]),
            rng.choice(["It feeds on {diet}.", "Its diet consists mostly of {diet}.", "The larvae eat {diet}."]),
        ]
        guide.append(f"## {beetle.name.capitalize()}\n\n" + " ".join(s.format(name=beetle.name, **f) for s in sentences) + "\n")
    scene = ["# Notes on the local music scene\n"]
    for band in bands:
        f = band.facts
        sentences = [
            rng.choice(["{name} formed in {city} in {formed}.", "In {formed}, {name} got together in {city}.",
                        "{name} started out in {city} in {formed}."]),
            rng.choice(["Their singer is {singer}.", "{singer} sings lead vocals.", "The band is fronted by {singer}."]),
            rng.choice(["Their first album was called {album}.", "The debut record, {album}, sold well.",
                        "They released {album} as their first album."]),
        ]
        scene.append(" ".join(s.format(name=band.name, **f) for s in sentences) + "\n")
    return {"harbour-register.md": "\n".join(register), "field-guide.md": "\n".join(guide),
            "music-scene.md": "\n".join(scene)}


QUESTIONS_B: dict[str, dict[str, list[str]]] = {
    "ship": {"launched": ["Which year did the {N} first touch the water?"],
             "home_port": ["Which harbour does the {N} call home?"],
             "captain": ["Who is the master of the {N}?"],
             "length": ["How long is the {N}, in metres?"]},
    "beetle": {"discoverer": ["Which naturalist was the first to give an account of the {N}?"],
               "habitat": ["Where in the wild can one come across the {N}?"],
               "diet": ["What food does the {N} live on?"],
               "size": ["Give the adult size of the {N} in millimetres."]},
    "band": {"formed": ["Which year saw the birth of {N} as a group?"],
             "city": ["Which town do {N} come from?"],
             "singer": ["Who is the lead vocalist of {N}?"],
             "album": ["Name the debut album of {N}."]},
}


# ---------------------------------------------------------------- writing the sets


def questions(entities: list[Entity], phrasings, family: int | None, rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for entity in entities:
        for attribute, value in entity.facts.items():
            options = phrasings[entity.kind][attribute]
            pool = options[family] if family is not None else options
            question = rng.choice(pool).format(N=entity.name)
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": value}],
                         "entity": entity.name, "kind": entity.kind, "attribute": attribute})
    return rows


def write_set(folder: Path, docs: dict[str, str], entities: list[Entity], splits: dict[str, list[dict]]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "docs").mkdir(parents=True)
    for name, text in docs.items():
        (folder / "docs" / name).write_text(text, encoding="utf-8")
    facts = [{"entity": e.name, "kind": e.kind, "attribute": a, "value": v} for e in entities for a, v in e.facts.items()]
    for name, rows in {"facts": facts, **splits}.items():
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def build(out: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    a = world_a(rng)
    write_set(out / "a", documents_a(a, rng), a,
              {"valid": questions(a, QUESTIONS_A, 0, rng), "test": questions(a, QUESTIONS_A, 1, rng)})
    rng_b = random.Random(seed + 1)
    b = world_b(rng_b)
    write_set(out / "b", documents_b(b, rng_b), b, {"test": questions(b, QUESTIONS_B, None, rng_b)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.out, args.seed)
    print(f"wrote {args.out}/a and {args.out}/b")


if __name__ == "__main__":
    main()
