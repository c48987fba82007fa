"""`retrieval`: answer a question by searching a small local corpus (shipped in this file).

The corpus is a dozen short passages about invented places, people and things, so a model
cannot know the answers beforehand and nothing is downloaded. The first observation holds the
question, e.g. "Question: Who built the Quillon bridge?". The policy may call

    <tool name="search">Quillon bridge builder</tool>
        → "Quillon bridge: The Quillon bridge crosses the river Sel at Marrow. ..."

- `search` returns the one passage ("TITLE: TEXT") with the most distinct query words in
  common (lower-cased words, stop words dropped; ties go to the earlier passage), or
  "No passage matches." when nothing overlaps.
- `<answer>`: reward 1.0 (`info["correct"] = 1`) when the answer, normalised (lower case,
  punctuation and the articles a/an/the dropped, spaces collapsed), equals one of the
  question's accepted answers ("Ada Brenning"; "1887"; "9" or "nine"), else 0.0; the
  episode ends.
- No answer within `max_turns` (default 3): reward `timeout_reward` (0.0).

Every question is answered by the passage `search(question)` returns (a test checks this).
`examples(split, n, seed)`: the questions of the split in an order shuffled by `seed`
(at most all of them); train and test are disjoint by a stable hash of the question.

`synthetic=N` replaces the shipped corpus by N generated passages (`synthetic_corpus`, fixed
by `corpus_seed`), one invented structure each, "Quillon bridge: Built by Dorrow in 1887.",
and one question per passage ("Who built the Quillon bridge?" or "In which year was the
Quillon bridge built?"). Seventeen questions are too few to learn from or to measure a held-out
success rate on; with a few hundred, the held-out answers can only come from a search.

`demonstration(example, use_tool=True)` (SFT warm starts): a search for the title of the
passage that answers the question, then the first accepted answer; with `use_tool=False` the
answer alone (right, but a model can only have memorised it for training questions).
"""

from __future__ import annotations

import random
import re
import string

from jaxrl_llm.envs.base import AnswerOutcome, ToolEnv
from jaxrl_llm.tasks.base import Example, check_split, split_of, split_rng

__all__ = [
    "CORPUS",
    "QUESTIONS",
    "RetrievalEnv",
    "normalize_answer",
    "search",
    "synthetic_corpus",
]

CORPUS: tuple[tuple[str, str], ...] = (
    (
        "Lake Varn",
        "Lake Varn is a glacial lake in the northern Halden mountains. Its deepest point is "
        "212 metres below the surface. The town of Osterby lies on its eastern shore.",
    ),
    (
        "Quillon bridge",
        "The Quillon bridge crosses the river Sel at Marrow. It was completed in 1887 and was "
        "built by the engineer Ada Brenning.",
    ),
    (
        "Tessaly cheese",
        "Tessaly is a blue cheese made from goat milk in the village of Pirn. It is aged for "
        "nine weeks in limestone caves.",
    ),
    (
        "Korrin language",
        "Korrin is spoken by about forty thousand people on the island of Vell. It has 23 "
        "consonants and had no written form before 1950.",
    ),
    (
        "Starling-7 probe",
        "The Starling-7 probe was launched in 2031 to study the moon Ceto. It carries a "
        "spectrometer called Lumen.",
    ),
    (
        "Marbury chess club",
        "The Marbury chess club was founded in 1902 by Tomas Feld. Its members meet every "
        "Thursday in the old library.",
    ),
    (
        "Red-crested pelnit",
        "The red-crested pelnit is a songbird of the Orla wetlands. It eats mostly dragonflies "
        "and lays three eggs each spring.",
    ),
    (
        "Ferrow's law",
        "Ferrow's law says that the drift of a sand dune grows with the square of the wind "
        "speed. Ilse Ferrow proposed it in 1961.",
    ),
    (
        "Gannet Street market",
        "The Gannet Street market opens every Saturday in Dunmere. Its stalls sell mostly fish "
        "and rope.",
    ),
    (
        "Oru festival",
        "The Oru festival is held at midsummer in the valley of Kesh. Its dancers wear masks "
        "of painted bark.",
    ),
)

# (question, accepted answers, index of the passage that answers it)
QUESTIONS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("How deep is Lake Varn at its deepest point?", ("212 metres", "212 m", "212"), 0),
    ("Which town lies on the eastern shore of Lake Varn?", ("Osterby",), 0),
    ("Who built the Quillon bridge?", ("Ada Brenning",), 1),
    ("In which year was the Quillon bridge completed?", ("1887",), 1),
    ("From which animal's milk is Tessaly cheese made?", ("goat", "goats"), 2),
    ("For how many weeks is Tessaly cheese aged?", ("nine", "9", "nine weeks", "9 weeks"), 2),
    ("On which island is the Korrin language spoken?", ("Vell",), 3),
    ("Which moon was the Starling-7 probe launched to study?", ("Ceto",), 4),
    ("What is the spectrometer on the Starling-7 probe called?", ("Lumen",), 4),
    ("Who founded the Marbury chess club?", ("Tomas Feld",), 5),
    ("On which day do members of the Marbury chess club meet?", ("Thursday", "Thursdays"), 5),
    ("What does the red-crested pelnit mostly eat?", ("dragonflies",), 6),
    ("How many eggs does the red-crested pelnit lay?", ("three", "3"), 6),
    ("Who proposed Ferrow's law?", ("Ilse Ferrow",), 7),
    ("In which town is the Gannet Street market?", ("Dunmere",), 8),
    ("In which valley is the Oru festival held?", ("Kesh",), 9),
    ("What are the Oru festival masks made of?", ("painted bark", "bark"), 9),
)

_STOP = frozenset(
    "a an the is are was were of in on at to by and or what which who whom how many much "
    "does do did it its for from with this that be s".split()
)
_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def _passage_words(corpus) -> tuple[frozenset[str], ...]:
    return tuple(frozenset(_words(f"{title} {text}")) for title, text in corpus)


_PASSAGE_WORDS = _passage_words(CORPUS)


def search(query: str, passage_words=_PASSAGE_WORDS) -> int | None:
    """Index of the passage sharing the most distinct non-stop words with `query` (the first
    on ties), or None when no word is shared. `passage_words`: another corpus's word sets."""
    q = _words(query)
    best, best_score = None, 0
    for i, words in enumerate(passage_words):
        score = len(q & words)
        if score > best_score:
            best, best_score = i, score
    return best


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "br", "gr", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "n", "r", "l", "s", "th")
_KINDS = ("bridge", "tower", "mill", "harbour", "library", "chapel")


def _name(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)]
    parts += [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables - 1)]
    return "".join(parts).capitalize()


def synthetic_corpus(n: int, seed: int = 0):
    """`n` generated passages and one question on each: (corpus, questions) in the shapes of
    `CORPUS` and `QUESTIONS`. Place names are distinct and differ from every builder name, so
    a passage's title words pick it out; deterministic per (n, seed)."""
    rng = random.Random(f"retrieval-synthetic:{seed}")
    places: list[str] = []
    seen: set[str] = set()
    while len(places) < n:
        place = _name(rng, 2)
        if place.lower() not in seen:
            seen.add(place.lower())
            places.append(place)
    corpus, questions = [], []
    for i, place in enumerate(places):
        kind = rng.choice(_KINDS)
        builder = _name(rng, 2)
        while builder.lower() in seen:
            builder = _name(rng, 2)
        year = str(rng.randint(1500, 1999))
        corpus.append((f"{place} {kind}", f"Built by {builder} in {year}."))
        if rng.random() < 0.5:
            questions.append((f"Who built the {place} {kind}?", (builder,), i))
        else:
            questions.append((f"In which year was the {place} {kind} built?", (year,), i))
    return tuple(corpus), tuple(questions)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles dropped, whitespace collapsed."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


class RetrievalEnv(ToolEnv):
    """Questions over `CORPUS`, a `search` tool, reward 1 for an accepted `<answer>`."""

    name = "retrieval"
    tools = ("search",)

    def __init__(
        self,
        *,
        test_fraction: float = 0.25,
        max_turns: int = 3,
        synthetic: int = 0,
        corpus_seed: int = 0,
        instructions: bool = True,
        **kwargs,
    ):
        super().__init__(max_turns=max_turns, **kwargs)
        self.test_fraction = test_fraction
        self.show_instructions = bool(instructions)
        if synthetic < 0:
            raise ValueError(f"synthetic must be >= 0, got {synthetic}")
        if synthetic:
            self.corpus, self.questions = synthetic_corpus(int(synthetic), int(corpus_seed))
            self._passage_words = _passage_words(self.corpus)
        else:
            self.corpus, self.questions, self._passage_words = CORPUS, QUESTIONS, _PASSAGE_WORDS

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        check_split(split)
        out = [
            Example(
                id=f"retrieval:{q}",
                prompt=f"Question: {q}",
                answer=answers[0],
                meta=(("accepted", answers), ("passage", idx)),
            )
            for q, answers, idx in self.questions
            if split_of(q, self.test_fraction) == split
        ]
        split_rng(seed, split).shuffle(out)
        return out[: int(n)]

    def instructions(self) -> str:
        if not self.show_instructions:  # the question alone (short prompts for small models)
            return ""
        return (
            "Answer the question using the document collection. Search it with "
            f"{self.parser.format_call('search', 'QUERY')}; answer with "
            f"{self.parser.format_answer('ANSWER')}."
        )

    def call_tool(self, name: str, argument: str) -> str:
        idx = search(argument, self._passage_words)
        if idx is None:
            return "No passage matches."
        title, text = self.corpus[idx]
        return f"{title}: {text}"

    def demonstration(self, example: Example, *, use_tool: bool = True) -> list[str]:
        """Expert actions for `example` (SFT warm starts): search the answering passage's
        title, then answer; with `use_tool=False` the answer alone."""
        meta = example.meta_dict()
        answer = self.parser.format_answer(meta.get("accepted", (example.answer,))[0])
        if not use_tool:
            return [answer]
        title = self.corpus[meta["passage"]][0]
        return [self.parser.format_call("search", title), answer]

    def on_answer(self, answer: str) -> AnswerOutcome:
        accepted = self.example.meta_dict().get("accepted", (self.example.answer,))
        correct = normalize_answer(answer) in {normalize_answer(a) for a in accepted}
        return AnswerOutcome(
            reward=1.0 if correct else 0.0,
            observation="Correct." if correct else "Incorrect.",
            info={"correct": int(correct)},
        )
