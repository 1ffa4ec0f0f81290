"""The fraud rule and its Avro framing, checked against Kafka's and Avro's own test vectors."""

import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastavro import schemaless_writer
from fastavro.schema import fingerprint, parse_schema
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core.avro_codec import (
    SINGLE_OBJECT_MAGIC,
    WireFormatError,
    canonical_form,
    confluent_frame,
    load_schema,
    schema_fingerprint_le,
    split_confluent,
)
from streaming.core.fraud import FraudModel, HashFraudModel, load_model
from streaming.core.review_bytes import (
    CANONICAL,
    MALFORMED,
    REVIEW_LAYOUT,
    murmur2,
    pack,
    scan_bodies,
    to_positive,
)
from streaming.settings import schemas_dir

REVIEW_AVSC = Path(__file__).resolve().parents[2] / "schemas" / "review.avsc"

# Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2.
KAFKA_MURMUR2_CASES = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (bytes([ord("a"), ord("b"), ord("c")]), 479470107),
]

# Avro's share/test/data/schema-tests.txt: (INPUT, canonical, fingerprint as a signed Java long).
AVRO_SCHEMA_CASES = [
    ('"null"', '"null"', 7195948357588979594),
    ('"boolean"', '"boolean"', -6970731678124411036),
    ('"long"', '"long"', -3434872931120570953),
    ('"string"', '"string"', -8142146995180207161),
    ("[  ]", "[]", -1241056759729112623),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    (
        '{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
        '{"name":"x.y.foo","type":"record","fields":[]}',
        5916914534497305771,
    ),
    (
        '{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}',
        '{"name":"a.b.foo","type":"record","fields":[]}',
        -4616218487480524110,
    ),
    (
        '{"fields":[{"type":{"type":"boolean"}, "name":"f1"}], "type":"record", "name":"foo"}',
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
        7843277075252814651,
    ),
    (
        '{"type":"enum", "name":"foo", "symbols":["A1"]}',
        '{"name":"foo","type":"enum","symbols":["A1"]}',
        -6342190197741309591,
    ),
    (
        '{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", '
        '"symbols":["A1", "A2"]}',
        '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}',
        -4448647247586288245,
    ),
    (
        '{"name":"foo","type":"fixed","size":15}',
        '{"name":"foo","type":"fixed","size":15}',
        1756455273707447556,
    ),
    (
        '{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}',
        '{"name":"x.y.z.foo","type":"fixed","size":32}',
        -3064184465700546786,
    ),
    (
        '{ "items":{"type":"null"}, "type":"array"}',
        '{"type":"array","items":"null"}',
        -589620603366471059,
    ),
    (
        '{ "values":"string", "type":"map"}',
        '{"type":"map","values":"string"}',
        -8732877298790414990,
    ),
    (
        '{"name":"PigValue","type":"record",'
        '"fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
        '{"name":"PigValue","type":"record","fields":[{"name":"value",'
        '"type":["null","int","long","PigValue"]}]}',
        -1759257747318642341,
    ),
]


def unsigned64(signed: int) -> int:
    return signed & 0xFFFF_FFFF_FFFF_FFFF


def encode(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, schema, record)
    return buf.getvalue()


RATINGS = ["5.0", "4.5", "4.0", "3.5", "3.0", "2.5", "2.0", "1.5", "1.0", "0.5"]


def make_review(
    review_id: int,
    rating: str,
    created: int,
    edit_ms: int,
    name: str,
    course_id: int,
    content: str | None,
) -> dict[str, Any]:
    return {
        "id": review_id,
        "title": None,
        "content": content,
        "rating": rating,
        "created": created,
        "modified": created + edit_ms,
        "user": {"title": name, "name": name, "display_name": name},
        "course": {
            "id": course_id,
            "title": f"Course {course_id}",
            "url": f"/course-{course_id}/",
        },
    }


def generated_reviews(count: int, seed: int = 20170330) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    first_names = ["Renato", "Ana", "Li", "Priya", "Tom", "Fatima", "Jonas", "Mei", "Omar"]
    last_names = ["Dias", "Silva", "Chen", "Patel", "Smith", "Khan", "Berg", "Wong", "Haddad"]
    return [
        make_review(
            review_id=6_000_000 + i,
            rating=rng.choices(RATINGS, weights=[75, 11, 9, 2, 1.5, 0.5, 0.5, 0.2, 0.2, 0.1])[0],
            created=1_490_000_000_000 + rng.randrange(200_000_000_000),
            edit_ms=rng.choice([0, 0, 0, rng.randrange(86_400_000)]),
            name=f"{rng.choice(first_names)} {rng.choice(last_names)}",
            course_id=rng.choice([1075642, 1141696, 1294188, 1421234]),
            content=rng.choice([None, None, None, "Great course", "Clear explanations."]),
        )
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def review_schema() -> Any:
    return load_schema(REVIEW_AVSC)


@pytest.fixture(scope="module")
def model() -> HashFraudModel:
    return HashFraudModel(REVIEW_AVSC)


# --- murmur2 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), KAFKA_MURMUR2_CASES)
def test_murmur2_matches_kafka_utils_test(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def reference_murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2 transcribed line by line in plain Python (slow, obviously right)."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    for i in range(len(data) // 4):
        k = int.from_bytes(data[i * 4 : i * 4 + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = len(data) & ~3
    rest = len(data) % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x8000_0000 else h


@pytest.mark.parametrize(("data", "expected"), KAFKA_MURMUR2_CASES)
def test_reference_murmur2_matches_kafka_utils_test(data: bytes, expected: int) -> None:
    assert reference_murmur2(data) == expected


@settings(deadline=None)  # the first example loads the compiled hash from numba's cache
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=20), st.binary(max_size=12))
def test_batch_hash_equals_scalar_reference(bodies: list[bytes], prefix: bytes) -> None:
    from streaming.core.review_bytes import hash_buckets

    prefix_array = np.frombuffer(prefix, dtype=np.uint8)
    got = hash_buckets(prefix_array, *pack(bodies), 100)
    assert [int(x) for x in got] == [
        to_positive(reference_murmur2(prefix + body)) % 100 for body in bodies
    ]
    assert [murmur2(prefix + b) for b in bodies] == [reference_murmur2(prefix + b) for b in bodies]


def test_scan_bodies_accepts_whole_records_only(review_schema: Any) -> None:
    bodies = [encode(review_schema, r) for r in generated_reviews(300, seed=3)]
    assert (scan_bodies(*pack(bodies), REVIEW_LAYOUT)[0] == CANONICAL).all()
    broken = [
        bodies[0][:-1],  # truncated inside the last string
        bodies[1][:3],  # truncated inside the header fields
        bodies[2] + b"\x00",  # a trailing byte
        b"",  # nothing at all
        bodies[3][:1] + b"\x06" + bodies[3][2:],  # union branch 3 does not exist
        b"\x02\x00\x00\x01",  # a negative string length
    ]
    assert (scan_bodies(*pack(broken), REVIEW_LAYOUT)[0] == MALFORMED).all()


def test_to_positive_clears_only_the_sign_bit() -> None:
    assert to_positive(-(2**31)) == 0
    assert to_positive(-1) == 0x7FFF_FFFF
    assert to_positive(-973932308) == -973932308 & 0x7FFF_FFFF
    assert to_positive(479470107) == 479470107


# --- CRC-64-AVRO and canonical form -------------------------------------------------------------


@pytest.mark.parametrize(("schema_json", "canonical", "expected"), AVRO_SCHEMA_CASES)
def test_fingerprint_matches_avro_spec(schema_json: str, canonical: str, expected: int) -> None:
    schema = parse_schema(json.loads(schema_json))
    assert canonical_form(schema) == canonical
    assert schema_fingerprint_le(schema) == unsigned64(expected).to_bytes(8, "little")


def test_review_fingerprint_matches_fastavro(review_schema: Any) -> None:
    expected = bytes.fromhex(fingerprint(canonical_form(review_schema), "CRC-64-AVRO"))
    assert schema_fingerprint_le(review_schema) == expected


def single_object_encoding(body: bytes, fingerprint_le: bytes) -> bytes:
    """Frame an Avro binary body as a single object: C3 01, schema fingerprint, body (the bytes
    the original app hashed; the fraud filter hashes prefix + body without building them)."""
    return SINGLE_OBJECT_MAGIC + fingerprint_le + body


def test_single_object_encoding_layout() -> None:
    fp = bytes(range(8))
    assert single_object_encoding(b"body", fp) == b"\xc3\x01" + fp + b"body"


# --- Confluent wire format ---------------------------------------------------------------------


def test_confluent_frame_is_magic_zero_and_big_endian_id() -> None:
    assert confluent_frame(0x01020304, b"avro") == b"\x00\x01\x02\x03\x04avro"


@given(schema_id=st.integers(0, 2**31 - 1), body=st.binary(max_size=300))
def test_confluent_round_trip(schema_id: int, body: bytes) -> None:
    assert split_confluent(confluent_frame(schema_id, body)) == (schema_id, body)


@pytest.mark.parametrize("value", [b"", b"\x00", b"\x00\x00\x00\x01"])
def test_split_rejects_values_shorter_than_header(value: bytes) -> None:
    with pytest.raises(WireFormatError, match="shorter than the 5-byte"):
        split_confluent(value)


@pytest.mark.parametrize("value", [b"\x01\x00\x00\x00\x01body", b"\xc3\x01\x00\x00\x00\x00"])
def test_split_rejects_wrong_magic_byte(value: bytes) -> None:
    with pytest.raises(WireFormatError, match="magic byte"):
        split_confluent(value)


def test_wire_format_error_is_a_value_error() -> None:
    assert issubclass(WireFormatError, ValueError)


# --- the rule ----------------------------------------------------------------------------------


def test_model_prefix_is_single_object_header(model: HashFraudModel, review_schema: Any) -> None:
    fp = bytes.fromhex(fingerprint(canonical_form(review_schema), "CRC-64-AVRO"))
    assert model.prefix == SINGLE_OBJECT_MAGIC + fp


def test_is_fraud_body_is_the_documented_rule(model: HashFraudModel, review_schema: Any) -> None:
    fp = schema_fingerprint_le(review_schema)
    for review in generated_reviews(500, seed=7):
        body = encode(review_schema, review)
        expected = to_positive(reference_murmur2(single_object_encoding(body, fp))) % 100 < 5
        assert model.is_fraud_body(body) is expected


def test_fraud_rate_is_about_five_percent(model: HashFraudModel, review_schema: Any) -> None:
    reviews = generated_reviews(20_000)
    bodies = {encode(review_schema, review) for review in reviews}
    assert len(bodies) == len(reviews)
    rate = sum(model.is_fraud_body(body) for body in bodies) / len(bodies)
    assert 0.04 <= rate <= 0.06


@given(
    review_id=st.integers(0, 2**63 - 1),
    rating=st.sampled_from(RATINGS),
    created=st.integers(0, 4_102_444_800_000),
    edit_ms=st.integers(0, 10**10),
    name=st.text(max_size=40),
    course_id=st.integers(0, 2**40),
    content=st.none() | st.text(max_size=200),
)
def test_is_fraud_on_dict_equals_is_fraud_body(
    model: HashFraudModel,
    review_schema: Any,
    review_id: int,
    rating: str,
    created: int,
    edit_ms: int,
    name: str,
    course_id: int,
    content: str | None,
) -> None:
    review = make_review(review_id, rating, created, edit_ms, name, course_id, content)
    assert model.is_fraud(review) == model.is_fraud_body(encode(review_schema, review))


# --- schemas dir -------------------------------------------------------------------------------


def test_schemas_dir_defaults_to_repo_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEMAS_DIR", raising=False)
    assert schemas_dir() == REVIEW_AVSC.parent


def test_schemas_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shutil.copy(REVIEW_AVSC, tmp_path / "review.avsc")
    monkeypatch.setenv("SCHEMAS_DIR", str(tmp_path))
    assert schemas_dir() == tmp_path
    model = load_model(None, schemas_dir())  # the caller passes the deployment's directory
    assert isinstance(model, HashFraudModel) and model.prefix == HashFraudModel(REVIEW_AVSC).prefix


# --- pluggable models --------------------------------------------------------------------------


class EveryFifthId:
    """A field-based test model: fraud iff the review id is a multiple of 5."""

    def is_fraud_batch(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return np.zeros(len(starts), dtype=bool)

    def is_fraud(self, review: dict[str, Any]) -> bool:
        return review["id"] % 5 == 0


class Models:
    @staticmethod
    def every_fifth() -> EveryFifthId:
        return EveryFifthId()


class NotAModel:
    def predict(self, review: dict[str, Any]) -> bool:
        return False


NOT_CALLABLE = 42


def test_default_model_is_hash_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEMAS_DIR", raising=False)
    for spec in (None, ""):
        model = load_model(spec)
        assert isinstance(model, HashFraudModel)
        assert isinstance(model, FraudModel)


def test_load_model_by_dotted_path() -> None:
    model = load_model(f"{__name__}:EveryFifthId")
    assert isinstance(model, EveryFifthId)
    assert model.is_fraud({"id": 10}) is True
    assert model.is_fraud({"id": 11}) is False


def test_load_model_by_nested_factory() -> None:
    assert isinstance(load_model(f"{__name__}:Models.every_fifth"), EveryFifthId)


def test_load_builtin_model_by_dotted_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEMAS_DIR", raising=False)
    assert isinstance(load_model("streaming.core.fraud:HashFraudModel"), HashFraudModel)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("no_colon_here", "expected 'package.module:factory_or_class'"),
        (":EveryFifthId", "expected 'package.module:factory_or_class'"),
        (f"{__name__}:", "expected 'package.module:factory_or_class'"),
        ("no_such_package_xyz.models:Model", "cannot import"),
        (f"{__name__}:Missing", "has no 'Missing'"),
        (f"{__name__}:Models.missing", "has no 'Models.missing'"),
        (f"{__name__}:NOT_CALLABLE", "is not callable"),
        (f"{__name__}:NotAModel", "lacks is_fraud_batch"),
    ],
)
def test_bad_spec_raises_clear_value_error(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match="bad FRAUD_MODEL spec") as excinfo:
        load_model(spec)
    assert repr(spec) in str(excinfo.value)
    assert reason in str(excinfo.value)
