"""Synthetic but realistic-looking catalog, users and events for the pipeline benchmark.

Everything is generated deterministically from a seed (``random.Random``): the same seed
gives the same catalog, the same user tastes and the same event sequences. Nothing here is
real data; the benchmark output says so.

* items: department / subcategory, a brand, a title built from the subcategory's product
  nouns and adjectives, a 2-4 sentence description from feature phrases;
* users: 1-3 favourite subcategories each; events pick an item from a favourite
  subcategory 70% of the time, else from the whole catalog, both Zipf-weighted so that a
  few items are popular and most are in the long tail;
* reviews: a rating (skewed positive, as real ratings are) and 10-40 words of text whose
  tone follows the rating and that names the item's product noun and a feature.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

# department -> subcategory -> (product nouns, feature phrases)
TAXONOMY: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "Electronics": {
        "Headphones": (
            ("Headphones", "Earbuds", "Headset"),
            ("active noise cancelling", "a 30-hour battery", "Bluetooth 5.3 multipoint pairing", "memory-foam ear cushions", "a built-in boom microphone"),
        ),
        "Speakers": (
            ("Bluetooth Speaker", "Soundbar", "Bookshelf Speakers"),
            ("deep bass", "IPX7 water resistance", "360-degree sound", "stereo pairing", "a 20-hour battery"),
        ),
        "Cameras": (
            ("Mirrorless Camera", "Action Camera", "Dash Cam"),
            ("4K60 video", "optical image stabilization", "a weather-sealed body", "fast hybrid autofocus", "a flip-out touchscreen"),
        ),
        "Laptops": (
            ("Laptop", "Ultrabook", "2-in-1 Notebook"),
            ("a 14-inch OLED display", "16 GB of RAM", "a backlit keyboard", "all-day battery life", "Thunderbolt 4 ports"),
        ),
        "Smartwatches": (
            ("Smartwatch", "Fitness Tracker", "GPS Watch"),
            ("heart-rate monitoring", "sleep tracking", "built-in GPS", "a 7-day battery", "contactless payments"),
        ),
        "Chargers": (
            ("USB-C Charger", "Power Bank", "Wireless Charging Pad"),
            ("65 W fast charging", "a 20,000 mAh capacity", "foldable prongs", "two USB-C ports", "overheat protection"),
        ),
    },
    "Home & Kitchen": {
        "Cookware": (
            ("Skillet", "Dutch Oven", "Saucepan Set"),
            ("a nonstick ceramic coating", "even heat distribution", "oven-safe handles", "induction compatibility", "cast-iron construction"),
        ),
        "Coffee Makers": (
            ("Espresso Machine", "Drip Coffee Maker", "Pour-Over Kettle"),
            ("a 15-bar pump", "a built-in grinder", "a programmable timer", "precise temperature control", "a milk frother"),
        ),
        "Knives": (
            ("Chef's Knife", "Knife Block Set", "Paring Knife"),
            ("high-carbon stainless steel", "a full-tang handle", "a razor-sharp edge", "a balanced weight", "a protective sheath"),
        ),
        "Bedding": (
            ("Duvet Cover", "Sheet Set", "Pillow"),
            ("breathable cotton percale", "a hypoallergenic fill", "deep pockets", "temperature regulation", "a soft sateen weave"),
        ),
        "Lighting": (
            ("Table Lamp", "LED Floor Lamp", "Pendant Light"),
            ("dimmable warm light", "a linen shade", "touch controls", "smart-home support", "an adjustable arm"),
        ),
        "Storage": (
            ("Storage Bins", "Pantry Organizer", "Shelving Unit"),
            ("stackable design", "clear airtight lids", "a bamboo finish", "tool-free assembly", "a space-saving footprint"),
        ),
    },
    "Books": {
        "Science Fiction": (
            ("Novel", "Space Opera", "Anthology"),
            ("a sweeping interstellar war", "a rogue artificial intelligence", "a generation ship", "first contact", "time travel"),
        ),
        "Mystery": (
            ("Thriller", "Detective Novel", "Crime Novel"),
            ("a locked-room murder", "a small coastal town", "an unreliable narrator", "a cold case", "a twist ending"),
        ),
        "Cookbooks": (
            ("Cookbook", "Baking Guide", "Recipe Collection"),
            ("weeknight dinners", "sourdough bread", "plant-based recipes", "regional Italian cooking", "one-pot meals"),
        ),
        "History": (
            ("History", "Biography", "Chronicle"),
            ("the Roman Empire", "the age of sail", "the Cold War", "the Silk Road", "the industrial revolution"),
        ),
        "Self-Help": (
            ("Guide", "Workbook", "Handbook"),
            ("building better habits", "managing stress", "personal finance", "productive mornings", "clear communication"),
        ),
        "Children's Books": (
            ("Picture Book", "Bedtime Story", "Activity Book"),
            ("friendly dragons", "counting and colours", "a brave little fox", "ocean animals", "first words"),
        ),
    },
    "Sports & Outdoors": {
        "Running": (
            ("Running Shoes", "Running Vest", "Trail Shoes"),
            ("responsive foam cushioning", "a breathable mesh upper", "a grippy outsole", "reflective details", "a lightweight build"),
        ),
        "Camping": (
            ("Tent", "Sleeping Bag", "Camp Stove"),
            ("a waterproof rainfly", "a 3-season rating", "quick pitch poles", "a compact pack size", "a windproof burner"),
        ),
        "Cycling": (
            ("Bike Helmet", "Bike Light", "Cycling Jersey"),
            ("MIPS protection", "a USB-rechargeable battery", "moisture-wicking fabric", "a rear cargo pocket", "1000 lumens"),
        ),
        "Yoga": (
            ("Yoga Mat", "Yoga Block Set", "Yoga Strap"),
            ("a non-slip surface", "extra-thick cushioning", "natural cork", "alignment lines", "a carrying strap"),
        ),
        "Fishing": (
            ("Spinning Reel", "Fishing Rod", "Tackle Box"),
            ("a smooth drag system", "a carbon-fibre blank", "corrosion-resistant bearings", "adjustable dividers", "a telescopic design"),
        ),
        "Backpacks": (
            ("Hiking Backpack", "Daypack", "Travel Pack"),
            ("an adjustable torso length", "a hydration sleeve", "a rain cover", "a padded laptop sleeve", "a ventilated back panel"),
        ),
    },
    "Clothing": {
        "Jackets": (
            ("Rain Jacket", "Down Jacket", "Fleece Jacket"),
            ("a waterproof shell", "800-fill down", "zippered hand pockets", "an adjustable hood", "a packable design"),
        ),
        "Jeans": (
            ("Slim Jeans", "Straight Jeans", "Relaxed Jeans"),
            ("stretch denim", "a classic five-pocket design", "a mid-rise waist", "a raw indigo wash", "reinforced seams"),
        ),
        "T-Shirts": (("T-Shirt", "Crew Neck Tee", "Henley"), ("organic cotton", "a relaxed fit", "tagless comfort", "pre-shrunk fabric", "a soft slub knit")),
        "Sneakers": (
            ("Sneakers", "Canvas Shoes", "Slip-On Shoes"),
            ("a cushioned insole", "a vulcanized rubber sole", "a leather upper", "a padded collar", "all-day comfort"),
        ),
        "Hats": (("Baseball Cap", "Beanie", "Sun Hat"), ("UPF 50 sun protection", "merino wool", "an adjustable strap", "a wide brim", "a sweat-wicking band")),
    },
    "Beauty": {
        "Skincare": (
            ("Moisturizer", "Vitamin C Serum", "Sunscreen"),
            ("hyaluronic acid", "SPF 50 protection", "a fragrance-free formula", "niacinamide", "a lightweight texture"),
        ),
        "Hair Care": (
            ("Shampoo", "Hair Dryer", "Conditioner"),
            ("argan oil", "ionic technology", "a sulfate-free formula", "three heat settings", "colour protection"),
        ),
        "Fragrance": (
            ("Eau de Parfum", "Cologne", "Body Mist"),
            ("notes of bergamot and cedar", "a long-lasting scent", "a travel-size bottle", "a floral heart", "warm vanilla base notes"),
        ),
    },
    "Toys & Games": {
        "Board Games": (
            ("Strategy Board Game", "Party Game", "Cooperative Game"),
            ("2 to 6 players", "45-minute play time", "beautifully illustrated cards", "high replay value", "easy-to-learn rules"),
        ),
        "Puzzles": (
            ("Jigsaw Puzzle", "3D Puzzle", "Brain Teaser Set"),
            ("1000 pieces", "a glare-free finish", "precision-cut pieces", "a poster guide", "wooden construction"),
        ),
        "Building Sets": (
            ("Building Set", "Robotics Kit", "Marble Run"),
            ("over 500 pieces", "step-by-step instructions", "a programmable motor", "compatible bricks", "STEM learning"),
        ),
    },
    "Garden": {
        "Garden Tools": (
            ("Pruning Shears", "Garden Hose", "Trowel Set"),
            ("a rust-resistant blade", "ergonomic grips", "a kink-free design", "a lifetime warranty", "a brass connector"),
        ),
        "Planters": (
            ("Ceramic Planter", "Raised Garden Bed", "Hanging Basket"),
            ("a drainage hole", "cedar wood", "a self-watering reservoir", "a matte glaze", "UV-resistant plastic"),
        ),
        "Outdoor Lighting": (
            ("Solar Path Lights", "String Lights", "Motion Sensor Light"),
            ("dusk-to-dawn sensing", "warm white LEDs", "weatherproof housing", "a solar panel", "an 8-hour runtime"),
        ),
    },
    "Pet Supplies": {
        "Dog Supplies": (
            ("Dog Bed", "Dog Harness", "Chew Toy"),
            ("orthopedic foam", "a no-pull front clip", "durable natural rubber", "a washable cover", "reflective stitching"),
        ),
        "Cat Supplies": (
            ("Cat Tree", "Cat Toy Set", "Litter Box"),
            ("sisal scratching posts", "catnip-filled toys", "an odour-control lid", "a cosy hideaway", "interactive feathers"),
        ),
        "Aquarium": (
            ("Aquarium Kit", "Aquarium Filter", "Aquarium Heater"),
            ("a quiet pump", "adjustable flow", "LED lighting", "precise thermostat control", "a 20-gallon tank"),
        ),
    },
    "Grocery": {
        "Coffee": (
            ("Whole Bean Coffee", "Ground Coffee", "Cold Brew Concentrate"),
            ("single-origin Ethiopian beans", "a medium roast", "notes of chocolate and cherry", "fair-trade sourcing", "a resealable bag"),
        ),
        "Tea": (
            ("Green Tea", "Earl Grey Tea", "Herbal Tea Sampler"),
            ("loose-leaf quality", "organic leaves", "a calming chamomile blend", "compostable sachets", "a bright citrus finish"),
        ),
        "Snacks": (("Trail Mix", "Protein Bars", "Kettle Chips"), ("roasted almonds", "20 g of protein", "sea salt", "no added sugar", "a variety pack")),
        "Pantry": (
            ("Olive Oil", "Spice Set", "Pasta"),
            ("cold-pressed extra virgin oil", "a dozen essential spices", "bronze-cut durum wheat", "a peppery finish", "glass jars"),
        ),
    },
    "Office": {
        "Notebooks": (
            ("Dotted Notebook", "Planner", "Sketchbook"),
            ("120 gsm paper", "a lay-flat binding", "numbered pages", "a hardcover", "an elastic closure"),
        ),
        "Desk": (
            ("Ergonomic Office Chair", "Standing Desk", "Monitor Arm"),
            ("adjustable lumbar support", "a dual-motor lift", "a memory preset panel", "breathable mesh", "gas-spring height adjustment"),
        ),
        "Writing": (
            ("Fountain Pen", "Gel Pen Set", "Mechanical Pencil"),
            ("a fine steel nib", "quick-drying ink", "a 0.5 mm lead", "a metal barrel", "a refillable converter"),
        ),
    },
    "Music": {
        "Guitars": (
            ("Acoustic Guitar", "Electric Guitar", "Ukulele"),
            ("a solid spruce top", "humbucker pickups", "a comfortable neck profile", "a gig bag", "a built-in tuner"),
        ),
        "Keyboards": (
            ("Digital Piano", "MIDI Keyboard", "Synthesizer"),
            ("88 weighted keys", "velocity-sensitive pads", "an analog filter", "USB-MIDI connectivity", "a built-in metronome"),
        ),
        "Recording": (
            ("USB Microphone", "Audio Interface", "Studio Monitors"),
            ("a cardioid pattern", "24-bit/192 kHz conversion", "zero-latency monitoring", "phantom power", "a flat frequency response"),
        ),
    },
}

ADJECTIVES = (
    "Classic",
    "Premium",
    "Compact",
    "Essential",
    "Ultra",
    "Pro",
    "Everyday",
    "Deluxe",
    "Lightweight",
    "Heritage",
    "Modern",
    "Rugged",
    "Slim",
    "Signature",
    "Eco",
    "Advanced",
    "Travel",
    "Studio",
)
COLORS = ("Black", "White", "Navy", "Sage Green", "Charcoal", "Sand", "Red", "Sky Blue", "Olive", "Graphite", "Ivory", "Burgundy", "Slate", "Coral")
MATERIALS = (
    "recycled materials",
    "stainless steel",
    "sustainably sourced wood",
    "durable nylon",
    "soft-touch plastic",
    "premium leather",
    "organic cotton",
    "aluminium",
    "tempered glass",
    "silicone",
)
USES = (
    "everyday use",
    "travel",
    "small apartments",
    "beginners and experts alike",
    "gifting",
    "busy mornings",
    "weekend adventures",
    "the whole family",
    "long workdays",
    "outdoor use",
)
BRAND_A = ("Nor", "Vel", "Ard", "Lum", "Kes", "Tal", "Bri", "Or", "Sol", "Mar", "Cal", "Fen", "Hal", "Riv", "Zen", "Ash")
BRAND_B = ("dex", "ora", "wick", "ton", "ara", "vio", "mont", "ly", "stone", "field", "crest", "bay", "lane", "forge")
AUTHOR_FIRST = ("Amelia", "Jonas", "Priya", "Mateo", "Hannah", "Kenji", "Sofia", "Elias", "Nadia", "Owen", "Leila", "Tomas")
AUTHOR_LAST = ("Hart", "Okafor", "Lindqvist", "Moreau", "Castillo", "Nakamura", "Brennan", "Haddad", "Kowalski", "Reyes")
BOOK_WORDS = (
    "Silent",
    "Harbor",
    "Glass",
    "River",
    "Last",
    "Winter",
    "Hidden",
    "Garden",
    "Iron",
    "Stars",
    "Salt",
    "Lantern",
    "Echo",
    "Northern",
    "Orchard",
    "Paper",
    "Storm",
    "Ember",
    "Quiet",
    "Meridian",
)

# review text pieces by tone
OPENERS = {
    5: ("Absolutely love this {noun}.", "Best {noun} I have owned.", "Exceeded my expectations.", "Five stars, no hesitation."),
    4: ("Really good {noun} overall.", "Very happy with this purchase.", "Solid {noun} for the price.", "Works well, a few small quirks."),
    3: ("It is okay.", "Decent {noun} but nothing special.", "Mixed feelings about this one.", "Does the job, mostly."),
    2: ("Disappointed with this {noun}.", "Not what I hoped for.", "Quality feels cheaper than expected.", "Had problems after a week."),
    1: ("Terrible {noun}, returned it.", "Do not buy this.", "Broke almost immediately.", "Complete waste of money."),
}
MIDDLES = {
    "pos": (
        "Loved {feature}, exactly as described.",
        "I use it every day and {feature} really makes a difference.",
        "Shipping was fast and the {noun} arrived well packed.",
        "Quality is excellent and {look} looks great.",
        "My partner liked it so much we ordered a second one.",
    ),
    "mid": (
        "The part about {feature} is fine but could be better.",
        "It took a while to get used to the {noun}.",
        "For the price it is acceptable, though {look} looks duller than in the photos.",
        "The description oversells it but it worked out in the end.",
    ),
    "neg": (
        "Expected more from {feature}, it disappointed after a few days.",
        "Customer support never answered my emails.",
        "The {noun} feels cheap and the finish scratched quickly.",
        "Nothing like the photos, {look} is way off.",
        "It arrived damaged and the replacement had the same issue.",
    ),
}
CLOSERS = {
    "pos": ("Highly recommended.", "Would buy again.", "Great value.", "Perfect for {use}."),
    "mid": ("Might work for {use}.", "Could be better.", "Three stars is fair.", "Check alternatives first."),
    "neg": ("Avoid.", "Returning it.", "Not recommended.", "Save your money."),
}
FILLER = ("honestly", "overall", "so far", "after two weeks", "for what it is", "to be fair", "in my experience")


@dataclass(frozen=True, slots=True)
class CatalogItem:
    item_id: str
    title: str
    description: str
    categories: tuple[str, ...]
    noun: str
    features: tuple[str, ...]
    color: str
    price: float
    subcat: int  # index into Catalog.subcategories


class Catalog:
    """``size`` generated items; ``items_by_subcat`` and Zipf weights for sampling."""

    def __init__(self, size: int, seed: int) -> None:
        rng = random.Random(f"catalog:{seed}")
        self.subcategories = [(dept, sub) for dept, subs in TAXONOMY.items() for sub in subs]
        brands = sorted({a + b for a, b in itertools.product(BRAND_A, BRAND_B)})
        rng.shuffle(brands)
        brands = brands[:120]
        self.items: list[CatalogItem] = []
        self.items_by_subcat: list[list[int]] = [[] for _ in self.subcategories]
        for i in range(size):
            s = rng.randrange(len(self.subcategories))
            dept, sub = self.subcategories[s]
            nouns, features = TAXONOMY[dept][sub]
            noun = rng.choice(nouns)
            feats = tuple(rng.sample(features, k=rng.randint(2, 3)))
            color = rng.choice(COLORS)
            price = round(rng.lognormvariate(3.3, 0.9), 2) + 0.99
            if dept == "Books":
                author = f"{rng.choice(AUTHOR_FIRST)} {rng.choice(AUTHOR_LAST)}"
                w1, w2 = rng.sample(BOOK_WORDS, 2)
                title = f"The {w1} {w2}: A {noun} by {author}"
                description = (
                    f"A {rng.choice(('gripping', 'thoughtful', 'beautifully written', 'bestselling', 'award-winning'))} "
                    f"{noun.lower()} about {feats[0]} and {feats[1]}. "
                    f"{author} {rng.choice(('returns with', 'delivers', 'offers'))} "
                    f"{rng.choice(('a story', 'a book', 'a page-turner'))} perfect for {rng.choice(USES)}. "
                    f"{rng.randint(180, 620)} pages, {rng.choice(('paperback', 'hardcover', 'ebook'))} edition."
                )
            else:
                brand = rng.choice(brands)
                model = f"{rng.choice('ABCDEKMSTVX')}{rng.randint(1, 9) * 100 + rng.choice((0, 10, 20, 50))}"
                title = f"{brand} {rng.choice(ADJECTIVES)} {noun} {model} ({color})"
                sentences = [
                    f"The {brand} {noun} combines {feats[0]} with {feats[1]}.",
                    (
                        f"Sourced from small producers and packed for {rng.choice(USES)}."
                        if dept == "Grocery"
                        else f"Made from {rng.choice(MATERIALS)} and designed for {rng.choice(USES)}."
                    ),
                ]
                if len(feats) > 2:
                    sentences.append(f"Also features {feats[2]}.")
                if rng.random() < 0.6:
                    sentences.append(
                        rng.choice(
                            (
                                f"Backed by a {rng.randint(1, 5)}-year warranty.",
                                "Ships in plastic-free packaging.",
                                f"Available in {rng.randint(2, 8)} colours.",
                                "Easy to clean and maintain.",
                            )
                        )
                    )
                description = " ".join(sentences)
            self.items.append(
                CatalogItem(
                    item_id=f"I{i:06d}",
                    title=title,
                    description=description,
                    categories=(dept, sub),
                    noun=noun,
                    features=feats,
                    color=color,
                    price=price,
                    subcat=s,
                )
            )
            self.items_by_subcat[s].append(i)
        # Zipf-like popularity (exponent 1.0) over a seeded random ranking of the items
        order = list(range(size))
        rng.shuffle(order)
        self.global_order = order
        self.global_cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(size)))
        self.subcat_cum = [list(itertools.accumulate(1.0 / (r + 1) for r in range(len(ids)))) for ids in self.items_by_subcat]

    def __len__(self) -> int:
        return len(self.items)

    def record(self, item: CatalogItem, ts: int) -> dict:
        """The ``items`` topic value (contract fields only)."""
        return {"item_id": item.item_id, "title": item.title, "description": item.description, "categories": list(item.categories), "ts": ts}

    def pick(self, rng: random.Random, favourites: tuple[int, ...]) -> int:
        """An item index: 70% from the user's favourite subcategories, else the whole catalog."""
        if favourites and rng.random() < 0.7:
            s = rng.choice(favourites)
            ids = self.items_by_subcat[s]
            if ids:
                cum = self.subcat_cum[s]
                return ids[bisect.bisect_left(cum, rng.random() * cum[-1])]
        cum = self.global_cum
        return self.global_order[min(bisect.bisect_left(cum, rng.random() * cum[-1]), len(cum) - 1)]


class Users:
    def __init__(self, n: int, catalog: Catalog, seed: int, prefix: str) -> None:
        rng = random.Random(f"users:{seed}:{prefix}")
        nonempty = [s for s, ids in enumerate(catalog.items_by_subcat) if ids]
        self.ids = [f"{prefix}{i:05d}" for i in range(n)]
        self.favourites = [tuple(rng.sample(nonempty, k=min(len(nonempty), rng.randint(1, 3)))) for _ in range(n)]
        # a few users are much more active than others
        self.cum = list(itertools.accumulate(1.0 / (r + 1) ** 0.6 for r in range(n)))

    def pick(self, rng: random.Random) -> int:
        return min(bisect.bisect_left(self.cum, rng.random() * self.cum[-1]), len(self.cum) - 1)


def item_text_len(item: CatalogItem) -> int:
    """Words of the text the worker embeds for an item (title. categories. description)."""
    return len(f"{item.title}. {', '.join(item.categories)}. {item.description}".split())


RATINGS = (5, 4, 3, 2, 1)
RATING_WEIGHTS = (0.45, 0.25, 0.12, 0.08, 0.10)


def review_text(rng: random.Random, item: CatalogItem, rating: int) -> str:
    """10 to 40 words whose tone follows the rating and that mention the item."""
    tone = "pos" if rating >= 4 else "mid" if rating == 3 else "neg"
    look = "the cover" if item.categories[0] == "Books" else f"the {item.color.lower()} colour"
    fmt = {"noun": item.noun.lower(), "feature": rng.choice(item.features), "look": look, "use": rng.choice(USES)}
    target = rng.randint(10, 40)
    parts = [rng.choice(OPENERS[rating]).format(**fmt)]
    middles = list(MIDDLES[tone])
    rng.shuffle(middles)
    for m in middles:
        if sum(len(p.split()) for p in parts) >= target - 3:
            break
        fmt["feature"] = rng.choice(item.features)
        parts.append(m.format(**fmt))
    parts.append(rng.choice(CLOSERS[tone]).format(**fmt))
    words = " ".join(parts).split()
    while len(words) < 10:
        words = [rng.choice(FILLER).capitalize() + ","] + words
    if len(words) > 40:
        words = words[:40]
        words[-1] = words[-1].rstrip(",.") + "."
    return " ".join(words)


def event_stream(kind: str, n: int, catalog: Catalog, users: Users, seed: int, tag: str):
    """``n`` (topic, user_id, value-without-ts) tuples of a workload, in order.

    ``kind`` is ``clicks`` (90% clicks, 10% purchases) or ``reviews``. Event ids are
    ``<tag>.<i>``; ``ts`` is filled in by the producer at send time.
    """
    rng = random.Random(f"events:{seed}:{kind}:{tag}")
    out = []
    for i in range(n):
        u = users.pick(rng)
        user_id = users.ids[u]
        item = catalog.items[catalog.pick(rng, users.favourites[u])]
        event_id = f"{tag}.{i}"
        if kind == "clicks":
            if rng.random() < 0.10:
                value = {
                    "user_id": user_id,
                    "item_id": item.item_id,
                    "event_id": event_id,
                    "quantity": 1 if rng.random() < 0.85 else rng.randint(2, 4),
                    "price": item.price,
                }
                out.append(("purchases", user_id, value))
            else:
                out.append(("clicks", user_id, {"user_id": user_id, "item_id": item.item_id, "event_id": event_id}))
        elif kind == "reviews":
            rating = rng.choices(RATINGS, RATING_WEIGHTS)[0]
            value = {"user_id": user_id, "item_id": item.item_id, "rating": rating, "text": review_text(rng, item, rating), "event_id": event_id}
            out.append(("reviews", user_id, value))
        else:
            raise ValueError(f"unknown workload {kind!r}")
    return out
