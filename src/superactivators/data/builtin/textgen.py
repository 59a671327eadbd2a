"""Deterministic generator of the built-in ``emotions`` text dataset.

In the spirit of an "augmented GoEmotions" set: short evidence sentences for
eight emotion concepts are embedded among neutral filler sentences (weather,
errands, schedules, objects...). Every sample records the character spans
``[start, end)`` of each present concept's evidence inside the final text, which
gives token-level ground truth.

All sentences below were written for this package. Evidence phrases are varied
on purpose: concepts share vocabulary with each other and with the filler
("happy hour", "thanks to the new timetable", sarcastic "thanks a lot", negated
"not exactly thrilled"...), so no single keyword gives a concept away.

Regenerate the shipped file with::

    python -m superactivators.data.builtin.textgen src/superactivators/builtin/data/emotions/metadata.csv
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = [
    "CONCEPTS",
    "EVIDENCE",
    "FILLERS",
    "SPLIT_FRACTIONS",
    "generate_emotions",
    "write_emotions_csv",
    "main",
]

PREFIX = "emotion::"

JOY: tuple[str, ...] = (
    "I honestly could not stop smiling on the walk home.",
    "This is the best news I have heard all year.",
    "We were laughing so hard that the neighbors probably heard us.",
    "My heart felt light for the whole afternoon.",
    "I am over the moon that the offer came through.",
    "What a wonderful way to start the weekend.",
    "It felt amazing to finally cross the finish line.",
    "I was practically dancing around the kitchen after the call.",
    "Seeing the whole family together again filled me with delight.",
    "Everything about that evening made me so happy.",
    "I'm thrilled with how the garden turned out.",
    "We cheered like kids when the results went up.",
    "That little note from my niece absolutely made my day.",
    "I feel lighter and brighter than I have in months.",
    "Honestly, this trip has been pure bliss from start to finish.",
    "The kids were giggling with excitement all morning, and so was I.",
    "I could not be more pleased with the way things went.",
    "It was one of those perfect days where nothing could bring me down.",
    "We celebrated with cake and music until late.",
    "My grin was so wide my cheeks started to hurt.",
    "I am so glad we decided to go after all.",
    "Getting the keys to our first place felt like a dream come true.",
    "The concert was a total blast and I loved every minute.",
    "I woke up cheerful and stayed that way all day.",
    "There is a warm, giddy feeling in my chest every time I think about it.",
    "Not a single thing went wrong, and I am beaming.",
    "Life feels good right now, really good.",
    "She hugged me and we both squealed with joy.",
    "I have been humming happily since breakfast.",
    "Winning that raffle put me in a fantastic mood.",
)

ANGER: tuple[str, ...] = (
    "I am absolutely furious that they cancelled without any warning.",
    "Not exactly thrilled that my parcel was left out in the rain again.",
    "This is the third time they have ignored my complaint, and I am fed up.",
    "My blood was boiling by the end of that meeting.",
    "How dare he take credit for work he never touched.",
    "I slammed the door harder than I meant to.",
    "Thanks a lot for losing my luggage, truly stellar service.",
    "I am so sick of being talked over in every single call.",
    "Honestly, the way they treated her makes me want to scream.",
    "I could barely keep my voice down when the clerk laughed at me.",
    "Their excuse was ridiculous and I told them so.",
    "It infuriates me that nobody takes responsibility for the mess.",
    "I am livid about the surprise fee on my bill.",
    "Do not ever speak to my sister like that again.",
    "I have had it with this landlord and his broken promises.",
    "The whole situation makes me so mad I can hardly think.",
    "I wanted to throw my phone across the room.",
    "That rude driver cut me off and then had the nerve to honk.",
    "I am seething, and an apology is the least they owe us.",
    "Nobody is happy about the new parking rules, and I am ready to give the council a piece of my mind.",
    "Stop wasting my time with the same useless answers.",
    "I gritted my teeth through the entire lecture about my attitude.",
    "It is outrageous that the repair still is not done after six weeks.",
    "I was so irritated that I hung up on them.",
    "They broke the fence and just walked away, which makes me fume.",
    "My patience snapped when he blamed me for his mistake.",
    "I will not let them get away with this.",
    "What a joke of a refund policy, I am done being polite.",
    "I am fuming over the way the referee handled that match.",
    "Every time I see that overflowing bin I get more annoyed with the building manager.",
)

SADNESS: tuple[str, ...] = (
    "I miss my grandmother more than I can put into words.",
    "The house feels so empty since the dog passed away.",
    "I cried quietly on the train home.",
    "Nothing about today feels happy anymore.",
    "My heart sank when I read the letter.",
    "I have been feeling low and tired of everything lately.",
    "It hurts to think we will never talk like that again.",
    "I wish she were still here to see this.",
    "The old neighborhood is gone, and with it a piece of me.",
    "I spent the evening staring at old photos with a lump in my throat.",
    "Saying goodbye at the station left me heartbroken.",
    "Everything feels gray and heavy since the funeral.",
    "I could not hold back the tears when the song came on.",
    "Some days the loneliness is hard to carry.",
    "It is depressing to watch the shop we loved close for good.",
    "I keep replaying our last conversation, full of regret.",
    "Losing the job hit me harder than I expected.",
    "I am not excited about anything these days, just numb.",
    "The silence at dinner made me feel terribly alone.",
    "We scattered his ashes by the lake and nobody said a word.",
    "I feel like I let everyone down, and it weighs on me.",
    "My chest aches every time I walk past her empty room.",
    "It was a gloomy goodbye, and I have been sad ever since.",
    "I miss the way things used to be between us.",
    "The news about the clinic closing left me sad and discouraged.",
    "I just want to curl up and let the day pass.",
    "Grief comes in waves, and this week it has been relentless.",
    "Watching the moving truck drive off broke my heart a little.",
    "I feel so blue that even my favorite music does not help.",
    "He looked so defeated, and I felt miserable for him.",
)

FEAR: tuple[str, ...] = (
    "I am terrified that the ice will crack under us.",
    "My hands were shaking as I opened the test results.",
    "Every creak in the hallway made me jump last night.",
    "I keep wondering whether the bridge will hold, and it makes my stomach knot.",
    "I am scared to walk to the car alone after dark.",
    "The thought of speaking in front of all those people fills me with dread.",
    "What if the storm takes out the roof while we sleep?",
    "I could barely breathe when the plane started dropping.",
    "My heart is pounding and I cannot shake the feeling that someone is following me.",
    "I am so anxious about the surgery tomorrow.",
    "That growling from the bushes frightened me half to death.",
    "I froze when I heard footsteps behind the locked door.",
    "I am afraid the flood water will reach the house before morning.",
    "Honestly, the idea of losing my job keeps me awake with panic.",
    "A chill ran down my spine when the lights went out.",
    "I am nervous that the scan will show something serious.",
    "Please do not leave me alone in this dark basement.",
    "I was too frightened to even look down from the ledge.",
    "Something about that empty parking garage really spooks me.",
    "I keep checking the locks because I am worried someone will break in.",
    "My knees went weak when the ladder started to wobble.",
    "I had a nightmare about the crash and woke up in a cold sweat.",
    "The smoke alarm went off in the night and I panicked.",
    "I dread the phone ringing at night now.",
    "The way the dog stared at us made me want to run.",
    "I am really uneasy about driving on that icy road.",
    "I was shaking like a leaf waiting for the verdict.",
    "Waiting outside the principal's office, I felt sick with nerves.",
    "I'm not curious about what is in that cellar, I am scared of it.",
    "The sirens getting closer filled me with a creeping horror.",
)

GRATITUDE: tuple[str, ...] = (
    "Thank you so much for staying late to help me move.",
    "I really appreciate you covering my shift on such short notice.",
    "I am so grateful for everything the nurses did for my father.",
    "Thanks a million for lending us the car.",
    "We owe you big time for watching the kids.",
    "Your kindness during the move meant the world to me.",
    "I cannot thank the volunteers enough for their patience.",
    "Many thanks to the team for fixing the leak so quickly.",
    "I am thankful to have friends who show up when it matters.",
    "It was so generous of you to share your notes with me.",
    "Much appreciated, you saved me hours of work.",
    "I want to say how grateful I am for your advice last spring.",
    "Thank you for believing in me when nobody else did.",
    "We are deeply thankful for the meals the neighbors brought over.",
    "Cheers for picking up the groceries, you are a lifesaver.",
    "I owe my coach a huge debt for pushing me to keep going.",
    "Your help with the paperwork made all the difference, thank you.",
    "I appreciate the extra time you gave me on the report.",
    "A big thank you to whoever returned my wallet.",
    "We were touched by how many people offered to help.",
    "I'm indebted to my sister for taking me in last winter.",
    "Thanks again for the ride, I would have been stranded without you.",
    "I am grateful the doctor took the time to explain everything.",
    "You went above and beyond, and I truly appreciate it.",
    "Bless you for bringing soup when I was sick.",
    "I can't express how much your support has meant to us.",
    "Thanks for being so patient with all my questions.",
    "It means a lot that you remembered my birthday.",
    "I am so appreciative of the mentor who answered every email.",
    "We are grateful to the firefighters who saved the barn.",
)

SURPRISE: tuple[str, ...] = (
    "I did not see that coming at all.",
    "Wow, I never expected them to actually say yes.",
    "My jaw dropped when she walked in with the trophy.",
    "I can't believe he finished the marathon without training.",
    "What a shock to find the old bakery open again.",
    "To my amazement, the package arrived a week early.",
    "I was stunned to learn they had been married for years.",
    "Out of nowhere, the whole class stood up and clapped.",
    "Whoa, the river is twice as high as yesterday.",
    "I nearly fell off my chair when I heard the price.",
    "Nobody told me the band was reuniting, what a twist.",
    "It caught me completely off guard when he resigned.",
    "I was astonished by how quickly the snow melted.",
    "Imagine my surprise when my old teacher answered the door.",
    "Of all the people to run into at the airport, it was my cousin.",
    "I blinked twice because I could not believe my eyes.",
    "That ending came out of left field.",
    "I was startled to see a deer standing in the office parking lot.",
    "Suddenly the lights came on and everyone yelled surprise.",
    "I had no idea the little shop sold vintage maps, how unexpected.",
    "Apparently the quiet intern is a chess champion, who knew.",
    "I did a double take when I saw the bill was zero.",
    "It turns out the meeting was cancelled months ago, and I had no clue.",
    "The cat opened the door by itself, which left us speechless.",
    "I was taken aback by how tall the kids have gotten.",
    "No way, they sold out in under a minute?",
    "The results were nothing like what we had predicted.",
    "Never in a million years did I think I would win.",
    "It was a real eye-opener to see the old mill turned into a theater.",
    "I gasped when the magician pulled my ring out of the orange.",
)

DISGUST: tuple[str, ...] = (
    "The smell from the fridge made me gag.",
    "That sandwich had mold all over it, absolutely revolting.",
    "I was grossed out by the hair in my soup.",
    "The way he chews with his mouth open makes my skin crawl.",
    "The gym showers were filthy and smelled like old socks.",
    "Ugh, someone left a half eaten burger under the seat.",
    "The slimy film on the pond water turned my stomach.",
    "I find their cruelty toward animals sickening.",
    "The restroom at the gas station was nauseating.",
    "There was a cockroach crawling across the bread, yuck.",
    "The leftover fish had gone rancid and the whole kitchen reeked.",
    "I could not finish the meal after seeing the greasy fingerprints on the plate.",
    "His behavior at the funeral was frankly repulsive.",
    "The milk had curdled into sour lumps, which was vile.",
    "I felt queasy looking at the overflowing trash chute.",
    "The alley stank of rotting garbage and spilled beer.",
    "Eww, the sponge is covered in something sticky.",
    "The way that official lied to grieving families is disgusting.",
    "Mushy gray meat in a lukewarm sauce, I nearly threw up.",
    "The carpet was stained and sticky and I did not want to touch anything.",
    "Finding maggots in the compost bin made me retch.",
    "The cheap perfume and cigarette smoke together were foul.",
    "I am repelled by how they bragged about cheating.",
    "Someone spat on the sidewalk right in front of me, gross.",
    "The drain clog was a tangle of hair and sludge, truly nasty.",
    "Just thinking about the cafeteria's fish stew makes me shudder.",
    "The hotel sheets had mystery stains, and I refused to sleep on them.",
    "The toilets at the festival were an unspeakable mess.",
    "Not exactly appetizing, the soup had a film of grease and a fly in it.",
    "That sour, rotten odor clung to my clothes for hours.",
)

CURIOSITY: tuple[str, ...] = (
    "I wonder why the river changes color every spring.",
    "How do bees decide which flowers to visit first?",
    "I have always wanted to know what is behind that locked gate.",
    "I'm curious how they built the bridge without modern cranes.",
    "Does anyone know where the old railway line used to go?",
    "I spent the evening reading about how octopuses change color.",
    "What makes some bread rise higher than others, I wonder?",
    "I am itching to find out how the story ends.",
    "I keep asking myself how the ancient sailors navigated at night.",
    "Now I really want to learn how the clock mechanism works.",
    "Who designed the strange spiral staircase in the library?",
    "I am intrigued by the symbols carved into the old door.",
    "I would love to take the radio apart to see what is inside.",
    "Why do cats knead blankets before they lie down?",
    "I've been digging into the history of our street name.",
    "I asked the guide a dozen questions about the cave formations.",
    "Is it true that some trees talk to each other through their roots?",
    "I'm fascinated by how languages borrow words from each other.",
    "I kept poking around the attic to see what else was hidden there.",
    "I need to figure out why the lamp flickers only at night.",
    "What would happen if we planted the seeds in sand instead?",
    "I looked up three articles trying to understand how tides work.",
    "The mystery of the missing painting keeps nagging at me, and I want to solve it.",
    "How on earth does a ship that heavy stay afloat?",
    "I am eager to explore the tunnels under the old factory.",
    "I wonder what the town looked like a hundred years ago.",
    "Where do all the pigeons go when it rains?",
    "I signed up for the workshop just to see how glass is blown.",
    "I could not resist peeking at the notes to learn how the trick was done.",
    "Out of pure interest, I asked how long the lighthouse has been running.",
)

#: Evidence phrases per concept column (``emotion::<name>``); spans point at these.
EVIDENCE: dict[str, tuple[str, ...]] = {
    PREFIX + "joy": JOY,
    PREFIX + "anger": ANGER,
    PREFIX + "sadness": SADNESS,
    PREFIX + "fear": FEAR,
    PREFIX + "gratitude": GRATITUDE,
    PREFIX + "surprise": SURPRISE,
    PREFIX + "disgust": DISGUST,
    PREFIX + "curiosity": CURIOSITY,
}

#: Concept column names, in CSV column order.
CONCEPTS: tuple[str, ...] = tuple(EVIDENCE)

#: Neutral sentences; some reuse emotion words in a non-emotional sense.
FILLERS: tuple[str, ...] = (
    # weather
    "The forecast calls for light rain in the morning and clearing skies by noon.",
    "It was about twelve degrees when I left the house.",
    "A steady wind blew in from the west most of the afternoon.",
    "The snow plows came through our street just after six.",
    "Humidity should drop a little by the end of the week.",
    "Clouds rolled in around lunch, but it never actually rained.",
    "The weather service posted a frost advisory for the valley.",
    "Sunrise tomorrow is at six forty-two.",
    "It drizzled on and off while we waited for the bus.",
    "The temperature is supposed to climb to the mid twenties on Saturday.",
    "The river level is measured every morning at the old bridge.",
    # errands
    "I dropped the package at the post office before noon.",
    "We need to pick up milk, eggs, and a bag of rice on the way back.",
    "The dry cleaner said the jacket will be ready on Thursday.",
    "I returned the library books and renewed the one about gardening.",
    "The pharmacy moved the pickup counter to the back of the store.",
    "I filled the tank at the station on Elm Street.",
    "The hardware store had the hinges but not the screws.",
    "We swapped the winter tires for the regular ones last weekend.",
    "I paid the water bill online and saved the receipt.",
    "The bakery on the corner opens at seven on weekdays.",
    "After work I stopped by the bank to deposit a check.",
    "She took the recycling out and brought the bins back in.",
    "I picked up a spare key from the locksmith on the way home.",
    "The store does not accept checks, only cards and cash.",
    # logistics and schedules
    "The meeting was moved from Tuesday to Wednesday at ten.",
    "The train leaves platform four at eight fifteen.",
    "Our flight has a short layover in Denver.",
    "The shuttle runs every twenty minutes between the terminals.",
    "Parking is available on the third level of the garage.",
    "The form has to be signed and returned by Friday.",
    "I set a reminder for the dentist appointment next month.",
    "The delivery window is between two and five in the afternoon.",
    "Registration for the autumn classes opens on the first of the month.",
    "The bus route was changed to skip the hospital stop during construction.",
    "We agreed to meet at the north entrance of the station.",
    "The conference schedule lists three sessions before lunch.",
    "The office will be closed on Monday for the holiday.",
    "I printed two copies of the itinerary just in case.",
    "Check-in at the hotel starts at three.",
    "The plumber said he would come by between nine and eleven.",
    "The elevator is not running on weekends, so take the stairs.",
    "The pool is closed for cleaning until Wednesday.",
    "The movie runs about two hours without trailers.",
    "Is the recycling pickup on Tuesday or Wednesday this week?",
    "Does the north lot need a permit after six?",
    "The ferry crossing takes forty minutes in calm weather.",
    "The manual explains how to reset the router in three steps.",
    "A poster by the bins shows how to sort the recycling.",
    "The receptionist will tell you which door to use for deliveries.",
    "If you park on the street, you need to move the car by eight.",
    "Bring your own bag to the farmers market on Saturday.",
    # objects
    "The table is made of oak and seats six people.",
    "The lamp has a brass base and a linen shade.",
    "My backpack has two side pockets and a padded laptop sleeve.",
    "The kettle holds about a liter and a half of water.",
    "The rug in the hallway is dark blue with a thin white border.",
    "The bookshelf has five shelves and leans slightly to the left.",
    "The old radio on the counter still picks up two stations.",
    "Her bike has a wicker basket and a bell on the handlebar.",
    "The mugs are stacked on the second shelf above the sink.",
    "The curtains in the guest room are a pale green.",
    "The clock in the kitchen runs about five minutes fast.",
    "The printer uses a black cartridge and three color ones.",
    "The notebook has a hard cover and numbered pages.",
    "The chair by the window has a small tear in the cushion.",
    "The sticker on the box says this side up.",
    "The pharmacy label says to take one tablet with food.",
    # routine
    "I usually take the long way through the park.",
    "We had pasta for dinner and washed the dishes right after.",
    "He walks the dog around the block every morning at seven.",
    "I spent part of the afternoon sorting the mail.",
    "The kids have soccer practice on Tuesdays and Thursdays.",
    "I made a pot of coffee and read the paper.",
    "We repainted the fence a light gray last summer.",
    "My neighbor mows his lawn every Saturday morning.",
    "I answered a few emails and then went for a short run.",
    "We moved the couch closer to the window.",
    "The kids watched a cartoon while I folded laundry.",
    "I charged my phone overnight and unplugged it in the morning.",
    "I watered the tomatoes before the sun got too high.",
    # work and office
    "The quarterly report has twelve pages and four charts.",
    "The spreadsheet tracks inventory for both warehouses.",
    "Our team uses a shared calendar for vacation days.",
    "The new badge readers were installed on every floor.",
    "The printer on the second floor is out of paper.",
    "IT will update the laptops over the weekend.",
    "The budget review covers the last three quarters.",
    "The sign on the door says no entry without a visitor badge.",
    "The storage room holds the holiday decorations and spare chairs.",
    # places
    "The museum is two blocks north of the town square.",
    "A new crosswalk was painted near the school.",
    "The library added a reading room on the second floor.",
    "There is a small park with a fountain behind the courthouse.",
    "The market sets up in the parking lot every Sunday.",
    "The road to the lake is gravel for the last mile.",
    "The shelter posted its adoption hours on the front window.",
    # neutral uses of emotion-like vocabulary
    "Happy hour at the place on Fifth Street starts at six.",
    "The bakery on Main Street is called Sweet Surprise.",
    "The store keeps its horror movies on the shelf by the door.",
    "The fire drill is scheduled for Thursday at ten.",
    "Thanks to the new timetable, the bus now stops at our corner.",
    "The card aisle has sections for birthdays, thank you notes, and sympathy cards.",
    "The documentary covers the Mars rover named Curiosity.",
    "The sign at the register says thank you for shopping local.",
    "The course on anger management meets in room 204.",
    "The paint swatch we picked is named Joyful Yellow.",
    "The invitation says guests should arrive at four.",
    "The recipe calls for bitter chocolate and a pinch of salt.",
    "The theater is showing a thriller at nine.",
    "The shop sells mugs with smiley faces printed on them.",
    "The science museum has an exhibit called Wonders of the Deep.",
    "The quiz night questions cover geography, music, and sports.",
    "The band's new album is titled Goodbye Summer.",
    "Our trivia team is registered as The Grateful Diners.",
    "The vet said the dog is healthy and due for shots in June.",
    "The crossword clue asked for a five letter word meaning afraid.",
    "The chapter on weather mentions the fear of thunder in dogs.",
)

#: Split names and their fractions (train / calibration / test).
SPLIT_FRACTIONS: tuple[tuple[str, float], ...] = (("train", 0.6), ("cal", 0.2), ("test", 0.2))

# Probability of a sample having 0, 1, 2 or 3 concepts.
_N_CONCEPT_WEIGHTS: tuple[float, ...] = (0.12, 0.45, 0.30, 0.13)
_P_SECOND_PHRASE = 0.2  # chance that a present concept gets two evidence sentences
_MAX_EVIDENCE = 4
_MIN_FILLERS = 2
_MIN_SENTENCES, _MAX_SENTENCES = 3, 8
_MIN_WORDS, _MAX_WORDS = 40, 120


# Only ``random.Random.random()`` is guaranteed stable across Python versions,
# so every draw below is built on it.
def _randbelow(rng: random.Random, n: int) -> int:
    """Uniform integer in ``[0, n)``."""
    return min(int(rng.random() * n), n - 1)


def _sample(rng: random.Random, items: Sequence[str] | Sequence[int], k: int) -> list:
    """``k`` distinct items drawn without replacement (partial Fisher-Yates)."""
    pool = list(items)
    for i in range(k):
        j = i + _randbelow(rng, len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


def _weighted_index(rng: random.Random, weights: Sequence[float]) -> int:
    """Index drawn with probability proportional to ``weights``."""
    u = rng.random() * sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    return len(weights) - 1


def _n_words(sentences: Sequence[str]) -> int:
    """Whitespace word count of a list of sentences."""
    return sum(len(s.split()) for s in sentences)


def _make_sample(rng: random.Random) -> tuple[dict[str, int], str, dict[str, list[list[int]]]]:
    """One sample: (labels, text, spans) with spans keyed by concept column."""
    k = _weighted_index(rng, _N_CONCEPT_WEIGHTS)
    present = sorted(_sample(rng, range(len(CONCEPTS)), k))
    evidence: list[tuple[str, str]] = []  # (concept, sentence)
    for ci in present:
        concept = CONCEPTS[ci]
        n = 2 if rng.random() < _P_SECOND_PHRASE else 1
        evidence += [(concept, s) for s in _sample(rng, EVIDENCE[concept], n)]
    while len(evidence) > _MAX_EVIDENCE:  # keep at least one sentence per concept
        counts: dict[str, int] = {}
        for c, _ in evidence:
            counts[c] = counts.get(c, 0) + 1
        drop = max(i for i, (c, _) in enumerate(evidence) if counts[c] > 1)
        evidence.pop(drop)

    n_ev = len(evidence)
    lo = max(_MIN_SENTENCES, n_ev + _MIN_FILLERS, 4)
    target = lo + _randbelow(rng, _MAX_SENTENCES - lo + 1)
    fillers = _sample(rng, FILLERS, _MAX_SENTENCES)
    used = fillers[: target - n_ev]
    spare = fillers[target - n_ev :]
    ev_sents = [s for _, s in evidence]
    while _n_words(used + ev_sents) < _MIN_WORDS and spare and len(used) + n_ev < _MAX_SENTENCES:
        used.append(spare.pop())
    while _n_words(used + ev_sents) > _MAX_WORDS and len(used) > _MIN_FILLERS:
        used.pop()

    # Shuffle evidence among fillers: pick slot positions for the evidence sentences.
    total = len(used) + n_ev
    ev_order = _sample(rng, range(n_ev), n_ev)
    slots = sorted(_sample(rng, range(total), n_ev))
    sentences: list[tuple[str | None, str]] = []
    fi = 0
    slot_to_ev = dict(zip(slots, ev_order))
    for pos in range(total):
        if pos in slot_to_ev:
            sentences.append(evidence[slot_to_ev[pos]])
        else:
            sentences.append((None, used[fi]))
            fi += 1

    parts: list[str] = []
    spans: dict[str, list[list[int]]] = {}
    offset = 0
    for concept, sent in sentences:
        if parts:
            offset += 1  # the joining space
        if concept is not None:
            spans.setdefault(concept, []).append([offset, offset + len(sent)])
        parts.append(sent)
        offset += len(sent)
    text = " ".join(parts)
    ordered = {c: sorted(spans[c]) for c in CONCEPTS if c in spans}
    labels = {c: int(c in ordered) for c in CONCEPTS}
    return labels, text, ordered


def _assign_splits(rng: random.Random, n: int) -> list[str]:
    """Deterministic random split labels with the fractions of SPLIT_FRACTIONS."""
    order = _sample(rng, range(n), n)
    split = [""] * n
    start = 0
    for i, (name, frac) in enumerate(SPLIT_FRACTIONS):
        stop = n if i == len(SPLIT_FRACTIONS) - 1 else start + int(round(frac * n))
        for j in order[start:stop]:
            split[j] = name
        start = stop
    return split


def generate_emotions(n_samples: int = 900, seed: int = 0) -> pd.DataFrame:
    """Generate the multi-label emotions dataset.

    Returns a DataFrame with one 0/1 column per concept (``emotion::joy``, ...),
    ``text``, ``spans`` (JSON: concept column -> list of ``[start, end)`` character
    spans, only for present concepts) and ``split`` (``train``/``cal``/``test``).
    """
    if n_samples < 1:
        raise ValueError("n_samples must be positive")
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for _ in range(n_samples):
        labels, text, spans = _make_sample(rng)
        rows.append({**labels, "text": text, "spans": json.dumps(spans)})
    splits = _assign_splits(rng, n_samples)
    for row, split in zip(rows, splits):
        row["split"] = split
    df = pd.DataFrame(rows, columns=[*CONCEPTS, "text", "spans", "split"])
    df[list(CONCEPTS)] = df[list(CONCEPTS)].astype("int64")
    return df


def write_emotions_csv(path: str | Path, n_samples: int = 900, seed: int = 0) -> Path:
    """Generate the dataset and write it as CSV to ``path`` (parents created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    generate_emotions(n_samples=n_samples, seed=seed).to_csv(out, index=False, lineterminator="\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m superactivators.data.builtin.textgen OUT_CSV [--n-samples N] [--seed S]``."""
    parser = argparse.ArgumentParser(description="Regenerate the built-in emotions dataset CSV.")
    parser.add_argument("out_csv", type=Path, help="where to write metadata.csv")
    parser.add_argument("--n-samples", type=int, default=900)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_emotions_csv(args.out_csv, n_samples=args.n_samples, seed=args.seed)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
