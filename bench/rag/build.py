"""Build the labelled retrieval set (deterministic): ``python -m bench.rag.build``.

Writes ``bench/rag/corpus/kb.jsonl`` (360 help-desk articles: 36 fictional
products x 10 topics) and ``bench/rag/queries.jsonl`` (120 queries, each with
its relevance judgments: 80 questions and 40 identifier lookups). Same seed,
same bytes: the files are committed, and ``tests/rag/test_dataset.py`` checks they
match this script.

How it is built, and why: every article is written from one of several templates
per topic, filled with facts drawn for its product (codes, numbers, parts). A
question asks for one article's fact in other words than the article uses (the
question says "factory reset", the article "restore ... original configuration"),
naming the product. So full-text search finds the product's articles but not
which of them answers, and vector search finds articles about the topic but
confuses products with similar names. The other third are what support staff
paste into a search box: a fault code alone (``E-4172``) or a software version
(``version 3.4.12 changes``), which only exact matching resolves (each code and
version is unique in the corpus). Relevance: the article asked about is grade 2;
the product's article on the companion topic (see RELATED) is grade 1.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 20261128
HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus" / "kb.jsonl"
QUERIES = HERE / "queries.jsonl"
N_QUESTIONS = 80
N_LOOKUPS = 40  # half fault codes, half software versions

BRANDS = ["Veltrix", "Quorra", "Nimbal", "Ostrava", "Kelvo", "Brisa", "Tandor", "Lumex", "Sarnic"]
KINDS = [
    "thermostat", "router", "doorbell camera", "robot vacuum", "smart speaker",
    "coffee grinder", "e-bike", "air purifier", "smartwatch",
]  # fmt: skip
BUTTONS = ["pinhole", "power", "mode", "pairing", "rear"]
LIGHTS = ["status", "ring", "front", "indicator"]
COLORS = ["amber", "blue", "white", "green", "red"]
COMPONENTS = ["main board", "fan assembly", "motor controller", "sensor array", "radio module"]
PARTS = ["vent grille", "touch panel", "lens cover", "brush housing", "outer shell"]
PROTOCOLS = ["Wi-Fi 6", "Bluetooth LE", "Zigbee", "Thread"]
FEATURES = [
    "scheduled quiet hours", "voice announcements", "energy reports", "guest access codes",
    "child lock", "away mode", "geofencing", "battery saver profiles",
]  # fmt: skip

TOPICS = [
    "reset", "error", "battery", "warranty", "firmware",
    "cleaning", "connectivity", "specs", "safety", "returns",
]  # fmt: skip
# Article titles: what a help desk would call them (not the words questions use).
TITLES = {
    "reset": "Restoring original settings", "error": "Fault codes", "battery": "Power and "
    "charging", "warranty": "Coverage", "firmware": "Software releases", "cleaning": "Care",
    "connectivity": "Pairing", "specs": "Dimensions", "safety": "Operating conditions",
    "returns": "Pricing and refunds",
}  # fmt: skip
# The topic whose article also partly answers a question (grade 1).
RELATED = {
    "reset": "connectivity", "error": "safety", "battery": "specs", "warranty": "returns",
    "firmware": "connectivity", "cleaning": "safety", "connectivity": "reset",
    "specs": "battery", "safety": "error", "returns": "warranty",
}  # fmt: skip

DOCS = {
    "reset": [
        "To restore the {name} to its original configuration, hold the {button} button for "
        "{n} seconds until the {light} light blinks {color}. Every saved preference is erased, "
        "so write down your schedules first.",
        "Returning the {name} to the state it left the factory in erases schedules and "
        "accounts. Press and keep holding the {button} button ({n} seconds); the {light} light "
        "flashes {color} when the wipe begins.",
    ],
    "error": [
        "Fault {code} on the {name} means the {component} reported a fault. Unplug the unit "
        "for a minute; if {code} comes back, the {component} needs service.",
        "When the display of the {name} shows {code}, the {component} stopped responding. A "
        "power cycle clears it in most cases; repeated {code} faults need a repair ticket.",
    ],
    "battery": [
        "The {name} runs for about {hours} hours on a full charge. Charging from empty takes "
        "{mins} minutes with the supplied {watt} W adapter.",
        "Expect roughly {hours} hours of use from the {name} between charges; a full top-up "
        "with the {watt} W brick in the box takes {mins} minutes.",
    ],
    "warranty": [
        "{brand} covers the {name} against manufacturing defects for {years} years from the "
        "date of purchase. Damage from liquids or drops is not included.",
        "Defects in materials or workmanship of the {name} are repaired free of charge for "
        "{years} years after you bought it. Accidental damage is excluded.",
    ],
    "firmware": [
        "Version {ver} of the {name} software adds {feature}. Install it from the companion "
        "app under Settings, then Updates; the unit restarts once.",
        "The {ver} release for the {name} brings {feature}. Open the app, choose Settings and "
        "Updates, and keep the device powered until it reboots.",
    ],
    "cleaning": [
        "Wipe the {part} of the {name} with a dry microfiber cloth every {weeks} weeks. Never "
        "use solvents or spray liquid directly onto the device.",
        "Dust builds up on the {part} of the {name}: brush it off with a soft dry cloth every "
        "{weeks} weeks and keep water and cleaning sprays away from it.",
    ],
    "connectivity": [
        "The {name} pairs with its hub over {protocol}. If pairing fails, move the unit within "
        "{m} meters of the hub and try again from the app.",
        "Linking the {name} uses {protocol}; when the app cannot find it, bring it closer than "
        "{m} meters to the hub and restart the pairing.",
    ],
    "specs": [
        "The {name} measures {w} by {h} millimeters and weighs {g} grams. The housing is "
        "recycled polycarbonate.",
        "Dimensions of the {name}: {w} x {h} mm. Its mass is {g} g, including the mounting plate.",
    ],
    "safety": [
        "Operate the {name} between {tmin} and {tmax} degrees Celsius. Keep it away from open "
        "flames and do not cover its vents.",
        "The {name} is rated for ambient temperatures from {tmin} to {tmax} degrees C; outside "
        "that range it shuts down to protect itself.",
    ],
    "returns": [
        "The {name} retails at {price} dollars. Unused units can be sent back within {days} "
        "days for a full refund.",
        "You paid {price} dollars for the {name}? If it does not suit you, ship it back in its "
        "box within {days} days and the money is refunded.",
    ],
}
LOOKUPS = {
    "error": ["{code}", "{code} fault"],
    "firmware": ["version {ver} changes", "{ver} release"],
}
QUERIES_BY_TOPIC = {
    "reset": ["how do I factory reset my {name}", "wipe my {name} back to factory defaults"],
    "error": ["my {name} shows {code}, what is wrong", "what does {code} mean on the {name}"],
    "battery": [
        "how long does the {name} last before it needs charging",
        "{name} battery life and recharge time",
    ],
    "warranty": [
        "is my {name} still under guarantee after {years_minus} years",
        "how long is the {name} warranty",
    ],
    "firmware": [
        "which update added {feature} to the {name}",
        "how do I upgrade the {name} firmware",
    ],
    "cleaning": ["how should I clean my {name}", "what can I use to clean the {name}"],
    "connectivity": [
        "my {name} will not connect to the hub",
        "what wireless standard does the {name} use",
    ],
    "specs": ["how heavy is the {name}", "what size is the {name}"],
    "safety": [
        "what temperatures can the {name} handle",
        "can I use the {name} in a freezing garage",
    ],
    "returns": ["what does the {name} cost", "can I get my money back for the {name}"],
}


def _products(rng: random.Random) -> list[dict[str, str]]:
    out, seen = [], set()
    while len(out) < 36:
        brand, kind = rng.choice(BRANDS), KINDS[len(out) % len(KINDS)]
        model = f"{rng.choice('ABCDEHKMQRSTVXZ')}{rng.randint(2, 9)}"
        name = f"{brand} {model} {kind}"
        if name in seen:
            continue
        seen.add(name)
        out.append({"brand": brand, "name": name, "kind": kind})
    return out


def _unique(rng: random.Random, taken: set[str], draw: Callable[[], str]) -> str:
    while (value := draw()) in taken:
        pass
    taken.add(value)
    return value


def _facts(rng: random.Random, product: dict[str, str], taken: set[str]) -> dict[str, object]:
    years = rng.randint(2, 5)
    return {
        **product,
        "button": rng.choice(BUTTONS),
        "n": rng.randint(5, 20),
        "light": rng.choice(LIGHTS),
        "color": rng.choice(COLORS),
        "code": _unique(rng, taken, lambda: f"E-{rng.randint(1000, 9999)}"),
        "component": rng.choice(COMPONENTS),
        "hours": rng.randint(4, 60),
        "mins": rng.randint(45, 240),
        "watt": rng.choice([10, 18, 30, 45, 65]),
        "years": years,
        "years_minus": years - 1,
        "ver": _unique(
            rng, taken, lambda: f"{rng.randint(1, 6)}.{rng.randint(0, 9)}.{rng.randint(0, 20)}"
        ),
        "feature": rng.choice(FEATURES),
        "part": rng.choice(PARTS),
        "weeks": rng.randint(1, 8),
        "protocol": rng.choice(PROTOCOLS),
        "m": rng.randint(2, 15),
        "w": rng.randint(40, 400),
        "h": rng.randint(40, 400),
        "g": rng.randint(90, 9000),
        "tmin": rng.randint(-20, 5),
        "tmax": rng.randint(30, 50),
        "price": rng.randint(39, 1499),
        "days": rng.choice([14, 30, 60, 90]),
    }


def build() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    rng = random.Random(SEED)
    docs: list[dict[str, object]] = []
    ids: dict[tuple[int, str], str] = {}
    taken: set[str] = set()  # codes and versions: a lookup has one answer
    facts = [_facts(rng, p, taken) for p in _products(rng)]
    for pi, f in enumerate(facts):
        for topic in TOPICS:
            doc_id = f"kb-{len(docs) + 1:03d}"
            ids[(pi, topic)] = doc_id
            text = rng.choice(DOCS[topic]).format(**f)
            title = f"{f['name']}: {TITLES[topic]}"
            docs.append(
                {"id": doc_id, "title": title, "text": text, "product": f["name"], "topic": topic}
            )
    rng.shuffle(docs)  # ingestion order must not give away the answer
    queries: list[dict[str, object]] = []
    pairs = [(pi, t) for pi in range(len(facts)) for t in TOPICS]
    lookups = [(pi, t) for pi in range(len(facts)) for t in LOOKUPS]
    picked = [(p, "question") for p in rng.sample(pairs, N_QUESTIONS)]
    picked += [(p, "lookup") for p in rng.sample(lookups, N_LOOKUPS)]
    rng.shuffle(picked)
    for n, ((pi, topic), kind) in enumerate(picked, 1):
        templates = QUERIES_BY_TOPIC[topic] if kind == "question" else LOOKUPS[topic]
        q = rng.choice(templates).format(**facts[pi])
        relevant = {ids[(pi, topic)]: 2, ids[(pi, RELATED[topic])]: 1}
        queries.append(
            {"id": f"q{n:03d}", "query": q, "topic": topic, "kind": kind, "relevant": relevant}
        )
    return docs, queries


def render(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def main() -> None:
    docs, queries = build()
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    CORPUS.write_text(render(docs))
    QUERIES.write_text(render(queries))
    print(f"{CORPUS}: {len(docs)} documents; {QUERIES}: {len(queries)} queries")


if __name__ == "__main__":
    main()
