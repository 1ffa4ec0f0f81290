"""Deterministic, realistic course reviews in the Udemy API's shape, from a seed.

The data is held in columns (numpy arrays, one row per review) and turned into JSON items only
when asked, so a million reviews generate in about a second and a page of 100 costs a few
vectorised gathers. Same spec, seed and `now` => identical output.

Shape, as Udemy's: ratings in half steps, ~75% 5.0, 11% 4.5, 9% 4.0, 2% 3.5, 1.5% 3.0, the
rest over 1.0-2.5, 0.5 only in versions written before March 2018; most reviews without text,
some long and non-ASCII; course sizes follow Zipf (the most popular course holds about a quarter
of all reviews); created times spread over ~9 years up to `now`; about 12% of reviews were edited
(modified > created), a third of those changing the rating. Review ids grow with creation time,
as Udemy's do, and are unique across courses.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import numpy as np

from streaming.core.review_mapping import COURSE_CLASS, REVIEW_CLASS, USER_CLASS

REVIEW_FIELDS: tuple[str, ...] = (
    "_class",
    "id",
    "title",
    "content",
    "rating",
    "created",
    "modified",
    "user_modified",
    "user",
    "course",
)
"""Every `course_review` field the sample can serve, in Udemy's output order."""

HALF_STAR_CUTOFF = datetime(2018, 3, 1, tzinfo=UTC)
"""Versions written from this moment on have ratings of at least 1.0."""

KAFKA_COURSE_PUBLISHED = datetime(2016, 6, 1, tzinfo=UTC)
"""The most popular course's reviews start here at the latest, so the sample keeps 0.5 ratings."""

_DAY_S = 86_400
_CHUNK = 8_192

# Probability of each rating, index = halves - 1 (0.5, 1.0, ..., 5.0).
_WEIGHTS_SINCE_CUTOFF = (0.0, 0.006, 0.002, 0.004, 0.003, 0.015, 0.02, 0.09, 0.11, 0.75)
_WEIGHTS_BEFORE_CUTOFF = (0.002, 0.004, 0.002, 0.004, 0.003, 0.015, 0.02, 0.09, 0.11, 0.75)

KAFKA_COURSE = (
    1075642,
    "Apache Kafka Series - Learn Apache Kafka for Beginners",
    "/apache-kafka-series-kafka-from-beginner-to-intermediate/",
)
"""The course of the original Java pipeline's example; always the sample's most popular one."""

_COURSE_TITLES = (
    "Apache Kafka Series - Kafka Streams for Data Processing",
    "Apache Kafka Series - Kafka Connect Hands-on Learning",
    "Apache Kafka Series - Confluent Schema Registry & REST Proxy",
    "Python for Data Analysis: Pandas, NumPy and Matplotlib",
    "Docker and Kubernetes for Developers: From Zero to Production",
    "SQL Masterclass: Window Functions, CTEs and Query Tuning",
    "Stream Processing with Apache Flink: Hands-On",
    "Java 17 Programming Masterclass",
    "Spring Boot Microservices with Kafka",
    "React and TypeScript: Build Real-World Apps",
    "AWS Certified Solutions Architect Associate - Exam Prep",
    "Terraform on AWS: Infrastructure as Code in Practice",
    "PostgreSQL Administration for Developers",
    "Go (Golang): The Complete Developer's Guide",
    "Rust Programming: Ownership, Traits and Async",
    "Deep Learning with PyTorch: Zero to GANs",
    "Linux Command Line Basics",
    "Git & GitHub Crash Course",
    "Data Engineering with Airflow and dbt",
    "Excel for Business Analysts: Pivot Tables to Power Query",
    "Photography Masterclass: A Complete Guide to Light and Composition",
    "Digital Marketing Strategy: SEO, Ads and Analytics",
    "Learn Japanese for Beginners: Hiragana, Katakana & Kanji",
    "Español para principiantes: curso completo",
    "Piano pour débutants : apprendre à jouer en 30 jours",
    "Unity Game Development: Build 2D & 3D Games",
    "Blender 3D: Modeling for Beginners",
    "Kotlin for Android Developers",
    "iOS & SwiftUI Bootcamp",
    "Financial Modeling & Valuation for Analysts",
    "Project Management Professional (PMP) Exam Prep",
    "Ethical Hacking from Scratch",
    "Graphic Design Fundamentals with Figma",
    "Public Speaking: Speak with Confidence",
    "数据结构与算法（Python 实现）",  # noqa: RUF001 (real CJK/Turkish text)
    "Elasticsearch and the Elastic Stack: In Depth",
    "Microservices Architecture: Patterns and Practices",
    "Yoga for Beginners: A 30-Day Program",
)
_TOPICS = (
    "Python",
    "Kafka",
    "SQL",
    "Kubernetes",
    "Machine Learning",
    "JavaScript",
    "Data Science",
    "Cloud Computing",
    "Cybersecurity",
    "Spark",
    "DevOps",
    "Product Management",
)
_FORMATS = (
    "The Complete {} Course",
    "{} for Beginners",
    "Mastering {}: Hands-On Projects",
    "{} Bootcamp",
    "Advanced {} in Practice",
    "{} Interview Preparation",
)

_FIRST_NAMES = (
    "Renato Dias",
    "Ana",
    "João",
    "María José",
    "Lukas",
    "Søren",
    "François",
    "Zoë",
    "Mehmet",
    "Ayşe",
    "Łukasz",
    "Priya",
    "Arjun",
    "Wei",
    "美咲",
    "Yuki",
    "Олег",
    "Αλέξανδρος",
    "محمد",
    "Nguyễn Văn",
    "Kwame",
    "Chloé",
    "Björn",
    "Sarah",
    "David",
    "Fatima",
    "Hiroshi",
    "Emily",
    "Carlos",
    "Siobhán",
    "Jürgen",
    "민준",
    "Ivan",
    "Olga",
    "Pedro Henrique",
    "Anjali",
    "Tomás",
    "Ingrid",
    "Kofi",
    "Lucía",
)
_LAST_NAMES = (
    "Santana",
    "Silva",
    "Müller",
    "García López",
    "Nørgaard",
    "Dubois",
    "Yılmaz",  # noqa: RUF001 (real CJK/Turkish text)
    "Kowalski",
    "Sharma",
    "Zhang",
    "佐藤",
    "Иванов",
    "Παπαδόπουλος",
    "Al-Hassan",
    "Tran",
    "Mensah",
    "Lefèvre",
    "Andersson",
    "Smith",
    "Johnson",
    "O'Brien",
    "Tanaka",
    "Rodríguez",
    "Ní Bhriain",
    "Schäfer",
    "김",
    "Petrov",
    "Nowak",
    "Costa",
    "Patel",
)
_NO_SURNAME_SHARE = 0.06

_TITLES = (
    "Great course",
    "Excellent!",
    "Very helpful",
    "Not what I expected",
    "Très bon cours",
    "Muy recomendable",
    "最高の講座",
    "强烈推荐",
    "Top 👍",
    "Ótimo curso",
)
_SHORT_CONTENTS = (
    "Great course!",
    "Very well explained, thank you.",
    "Excellent instructor, clear and to the point.",
    "Good content but the audio could be better.",
    "Exactly what I needed for my new job.",
    "Too slow for me, I skipped most of the videos.",
    "Outdated: several commands no longer work.",
    "Excelente curso, muy bien explicado.",
    "Très bien expliqué, merci beaucoup !",
    "Sehr gut erklärt, klare Struktur.",
    "Ótimo curso, recomendo a todos.",
    "Ottimo corso, spiegazioni chiarissime.",
    "非常好的课程，讲解清楚。",  # noqa: RUF001 (real CJK/Turkish text)
    "とても分かりやすかったです。ありがとうございました！",  # noqa: RUF001 (real CJK/Turkish text)
    "정말 유익한 강의였습니다.",
    "Отличный курс, всё понятно.",
    "ممتاز جدا، شكرا لك",
    "Loved it 😍🔥",
    "👍👍👍",
    "Solid intro. 4/5 because the last section felt rushed.",
    'The "hands-on" part is great; the quiz answers are wrong in section 3.',
    "Line one.\nLine two after a break.\tAnd a tab.",
    "Path examples use C:\\kafka\\bin\\windows — worked fine on Windows.",
    "Naïve question: is Zookeeper still needed? (Answered in lecture 42 — thanks!)",
)
_SENTENCES = (
    "I came to this course with some experience but no real understanding of the topic.",
    "The instructor explains every concept before showing the code, which I appreciated.",
    "Some lectures are a bit long and could be cut in half.",
    "The hands-on labs were the best part: I built the whole project along the way.",
    "A few videos are outdated and the commands have changed since they were recorded.",
    "The Q&A section is active and my questions were answered within a day.",
    "I would have liked more exercises and fewer slides.",
    "After finishing it I passed my certification on the first try.",
    "El contenido es muy completo y está bien organizado.",
    "Les exemples sont concrets et faciles à reproduire.",
    "Die Übungen am Ende jedes Abschnitts sind sehr hilfreich.",
    "讲师的发音很清楚，每一节都有实际的例子。",  # noqa: RUF001 (real CJK/Turkish text)
    "実務ですぐに使える内容でした。",
    "Спасибо автору за подробные объяснения!",
    "Definitely worth the price 💯",
    "Audio quality improves a lot after section two. 🎧",
)
_LONG_CONTENTS = 200
_LONG_SHARE = 0.15


@dataclass(frozen=True)
class SampleSpec:
    """What to generate. The defaults are the bundled sample (36 courses, 30,000 reviews)."""

    seed: int = 20170330
    courses: int = 36
    reviews: int = 30_000
    popularity: float = 1.0
    """Zipf exponent of course sizes: the k-th course (from 1) gets a share ~ k**-popularity."""
    history_days: int = 3_300
    """Age of the oldest courses: reviews spread from then up to `now` (June 2016 at the latest
    for the most popular course)."""
    edited_share: float = 0.12
    rating_edit_share: float = 0.35
    """Share of edited reviews whose rating changed."""
    text_share: float = 0.3
    title_share: float = 0.04

    def __post_init__(self) -> None:
        if self.courses < 1 or self.reviews < 0 or self.history_days < 1:
            raise ValueError("SampleSpec needs courses >= 1, reviews >= 0, history_days >= 1")
        shares = (self.edited_share, self.rating_edit_share, self.text_share, self.title_share)
        if not all(0.0 <= share <= 1.0 for share in shares):
            raise ValueError("SampleSpec shares must lie between 0 and 1")


DEFAULT_SPEC = SampleSpec()


@dataclass(frozen=True)
class Course:
    """A course as the API nests it in each review."""

    id: int
    title: str
    url: str

    def to_json(self) -> dict[str, Any]:
        return {"_class": COURSE_CLASS, "id": self.id, "title": self.title, "url": self.url}


@dataclass(frozen=True, eq=False)
class Sample:
    """Generated courses and reviews, in columns with one row per review, rows in id order.

    Rows hold each review's current version; `earlier_*` columns hold the versions it replaced
    (one row per earlier version), so a replay of `versions()` ends in the served state.
    """

    spec: SampleSpec
    now: datetime
    courses: tuple[Course, ...]
    ids: np.ndarray
    course_index: np.ndarray
    created_s: np.ndarray
    modified_s: np.ndarray
    rating_halves: np.ndarray
    title_index: np.ndarray
    content_index: np.ndarray
    first_name_index: np.ndarray
    last_name_index: np.ndarray
    earlier_row: np.ndarray
    earlier_modified_s: np.ndarray
    earlier_rating_halves: np.ndarray
    earlier_content_index: np.ndarray
    titles: tuple[str, ...]
    contents: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def course_positions(self) -> dict[int, int]:
        """Course id -> its position in `courses` (the value `course_index` holds)."""
        return {course.id: position for position, course in enumerate(self.courses)}

    @cached_property
    def _course_json(self) -> list[dict[str, Any]]:
        return [course.to_json() for course in self.courses]

    def course_rows(self, course_id: int) -> np.ndarray:
        """Rows of one course's reviews, in id order (oldest first)."""
        position = self.course_positions.get(course_id)
        if position is None:
            raise KeyError(f"course {course_id} is not in the sample")
        return np.flatnonzero(self.course_index == position)

    def items(self, rows: np.ndarray, fields: Sequence[str] = REVIEW_FIELDS) -> list[dict]:
        """Current versions of `rows` as Udemy result items, restricted to `fields`."""
        return self._project(
            rows, fields, self.modified_s[rows], self.rating_halves[rows], self.content_index[rows]
        )

    def reviews(self, course_id: int | None = None) -> Iterator[dict]:
        """Current version of every review (of one course, or all), in id order."""
        rows = np.arange(len(self.ids)) if course_id is None else self.course_rows(course_id)
        for start in range(0, len(rows), _CHUNK):
            yield from self.items(rows[start : start + _CHUNK])

    def versions(self, course_id: int | None = None) -> Iterator[dict]:
        """Every version of every review in the order they were written (modified, then id).

        Replaying them through the pipeline ends in the state the API serves.
        """
        rows = np.concatenate([np.arange(len(self.ids)), self.earlier_row])
        modified = np.concatenate([self.modified_s, self.earlier_modified_s])
        rating = np.concatenate([self.rating_halves, self.earlier_rating_halves])
        content = np.concatenate([self.content_index, self.earlier_content_index])
        order = np.lexsort((self.ids[rows], modified))
        if course_id is not None:
            wanted = np.zeros(len(self.ids), dtype=bool)
            wanted[self.course_rows(course_id)] = True
            order = order[wanted[rows[order]]]
        for start in range(0, len(order), _CHUNK):
            chunk = order[start : start + _CHUNK]
            yield from self._project(
                rows[chunk], REVIEW_FIELDS, modified[chunk], rating[chunk], content[chunk]
            )

    def _project(
        self,
        rows: np.ndarray,
        fields: Sequence[str],
        modified_s: np.ndarray,
        rating_halves: np.ndarray,
        content_index: np.ndarray,
    ) -> list[dict]:
        """Build items column by column (vectorised where numpy can); the version columns
        (modified, rating, content) are given per item, so earlier versions share the code."""
        count = len(rows)
        columns: list[list[Any]] = []
        modified_iso: list[str] | None = None
        for field in fields:
            if field == "_class":
                columns.append([REVIEW_CLASS] * count)
            elif field == "id":
                columns.append(self.ids[rows].tolist())
            elif field == "title":
                columns.append([self.titles[i] for i in self.title_index[rows].tolist()])
            elif field == "content":
                columns.append([self.contents[i] for i in content_index.tolist()])
            elif field == "rating":
                columns.append((rating_halves / 2).tolist())
            elif field == "created":
                columns.append(_iso(self.created_s[rows]))
            elif field in ("modified", "user_modified"):
                if modified_iso is None:
                    modified_iso = _iso(modified_s)
                columns.append(modified_iso)
            elif field == "user":
                columns.append(self._users(rows))
            elif field == "course":
                course_json = self._course_json
                columns.append([dict(course_json[i]) for i in self.course_index[rows].tolist()])
        names = [field for field in fields if field in REVIEW_FIELDS]
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]

    def _users(self, rows: np.ndarray) -> list[dict[str, str]]:
        users = []
        for first_index, last_index in zip(
            self.first_name_index[rows].tolist(), self.last_name_index[rows].tolist(), strict=True
        ):
            name = _FIRST_NAMES[first_index]
            display = f"{name} {_LAST_NAMES[last_index]}" if last_index >= 0 else name
            users.append(
                {"_class": USER_CLASS, "title": display, "name": name, "display_name": display}
            )
        return users


def _iso(seconds: np.ndarray) -> list[str]:
    return np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s", timezone="UTC").tolist()


def default_now() -> datetime:
    """Today at 00:00 UTC: the sample then always covers the last 90 days, stable for a day."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _course_sizes(spec: SampleSpec) -> np.ndarray:
    """Zipf shares rounded by largest remainder, so sizes sum exactly to `spec.reviews`."""
    weights = np.arange(1, spec.courses + 1, dtype=float) ** -spec.popularity
    exact = spec.reviews * weights / weights.sum()
    sizes = np.floor(exact).astype(np.int64)
    shortfall = spec.reviews - int(sizes.sum())
    sizes[np.argsort(sizes - exact, kind="stable")[:shortfall]] += 1
    return sizes


def _slug(title: str) -> str:
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")


def _courses(spec: SampleSpec, rng: np.random.Generator) -> tuple[Course, ...]:
    titles = [KAFKA_COURSE[1], *_COURSE_TITLES]
    composed = (fmt.format(topic) for fmt in _FORMATS for topic in _TOPICS)
    while len(titles) < spec.courses:
        title = next(composed, None)
        titles.append(title or f"{_TOPICS[len(titles) % len(_TOPICS)]} Part {len(titles)}")
    ids = [KAFKA_COURSE[0]]
    taken = set(ids)
    while len(ids) < spec.courses:
        candidate = int(rng.integers(10_000, 5_000_000))
        if candidate not in taken:
            taken.add(candidate)
            ids.append(candidate)
    courses = [Course(*KAFKA_COURSE)]
    urls = {KAFKA_COURSE[2]}
    for course_id, title in zip(ids[1:], titles[1 : spec.courses], strict=True):
        url = f"/{_slug(title) or f'course-{course_id}'}/"
        if url in urls:
            url = f"/{_slug(title) or 'course'}-{course_id}/"
        urls.add(url)
        courses.append(Course(course_id, title, url))
    return tuple(courses)


def _long_contents(rng: np.random.Generator) -> list[str]:
    texts = []
    for _ in range(_LONG_CONTENTS):
        picks = rng.integers(0, len(_SENTENCES), int(rng.integers(5, 30)))
        texts.append(" ".join(_SENTENCES[i] for i in picks))
    return texts


def _ratings(rng: np.random.Generator, before_cutoff: np.ndarray) -> np.ndarray:
    """Rating halves (1..10) drawn from the distribution of each version's period."""
    draws = rng.random(len(before_cutoff))
    out = np.empty(len(before_cutoff), dtype=np.int8)
    for mask, weights in (
        (before_cutoff, _WEIGHTS_BEFORE_CUTOFF),
        (~before_cutoff, _WEIGHTS_SINCE_CUTOFF),
    ):
        cdf = np.cumsum(weights)
        cdf[-1] = 1.0
        out[mask] = np.searchsorted(cdf, draws[mask], side="right") + 1
    return out


def generate(spec: SampleSpec = DEFAULT_SPEC, *, now: datetime | None = None) -> Sample:
    """Generate the sample of `spec`, with creation times up to `now` (default: `default_now()`)."""
    now = default_now() if now is None else now
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now_s = math.floor(now.timestamp())
    cutoff_s = int(HALF_STAR_CUTOFF.timestamp())
    rng = np.random.default_rng(spec.seed)
    n = spec.reviews

    courses = _courses(spec, rng)
    youngest = min(120, spec.history_days)
    course_age_s = rng.integers(youngest, spec.history_days + 1, spec.courses) * _DAY_S
    course_age_s[0] = max(
        spec.history_days * _DAY_S, now_s - int(KAFKA_COURSE_PUBLISHED.timestamp())
    )
    course_index = np.repeat(np.arange(spec.courses, dtype=np.int32), _course_sizes(spec))
    created = now_s - 1 - np.floor(rng.random(n) * course_age_s[course_index]).astype(np.int64)
    order = np.lexsort((rng.random(n), created))
    course_index, created = course_index[order], created[order]
    ids = 1_000_000 + np.cumsum(rng.integers(1, 24, n, dtype=np.int64))

    delay = np.ceil(rng.exponential(20 * _DAY_S, n)).astype(np.int64) + 60
    edited = rng.random(n) < spec.edited_share
    modified = np.where(edited, np.minimum(created + delay, now_s - 1), created)
    edited &= modified > created
    twice = edited & (rng.random(n) < 0.2) & (modified - created >= 2)
    middle = created + 1 + np.floor(rng.random(n) * (modified - created - 1)).astype(np.int64)

    rating = _ratings(rng, modified < cutoff_s)
    first_rating = _ratings(rng, created < cutoff_s)
    first_rating = np.where(
        first_rating == rating, np.where(rating > 2, rating - 1, rating + 1), first_rating
    ).astype(np.int8)
    rating_edit = edited & (rng.random(n) < spec.rating_edit_share)
    first_rating = np.where(rating_edit, first_rating, rating).astype(np.int8)

    long_pool = _long_contents(rng)
    contents = ("", *_SHORT_CONTENTS, *long_pool)
    has_text = rng.random(n) < spec.text_share
    is_long = rng.random(n) < _LONG_SHARE
    short_pick = 1 + rng.integers(0, len(_SHORT_CONTENTS), n)
    long_pick = 1 + len(_SHORT_CONTENTS) + rng.integers(0, len(long_pool), n)
    content = np.where(has_text, np.where(is_long, long_pick, short_pick), 0).astype(np.int32)
    first_content = np.where(rng.random(n) < spec.text_share, short_pick, 0).astype(np.int32)
    titles = ("", *_TITLES)
    has_title = rng.random(n) < spec.title_share
    title = np.where(has_title, 1 + rng.integers(0, len(_TITLES), n), 0).astype(np.int32)
    first_name = rng.integers(0, len(_FIRST_NAMES), n).astype(np.int16)
    last_name = rng.integers(0, len(_LAST_NAMES), n).astype(np.int16)
    last_name[rng.random(n) < _NO_SURNAME_SHARE] = -1

    first_rows = np.flatnonzero(edited)
    middle_rows = np.flatnonzero(twice)
    return Sample(
        spec=spec,
        now=now,
        courses=courses,
        ids=ids,
        course_index=course_index,
        created_s=created,
        modified_s=modified,
        rating_halves=rating,
        title_index=title,
        content_index=content,
        first_name_index=first_name,
        last_name_index=last_name,
        earlier_row=np.concatenate([first_rows, middle_rows]),
        earlier_modified_s=np.concatenate([created[first_rows], middle[middle_rows]]),
        earlier_rating_halves=np.concatenate([first_rating[first_rows], rating[middle_rows]]),
        earlier_content_index=np.concatenate([first_content[first_rows], content[middle_rows]]),
        titles=titles,
        contents=contents,
    )
