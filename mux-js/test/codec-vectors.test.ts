import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeMessage, encodeMessage } from "../src/codec/index.js";
import { frameFromJson, frameToJson, hex, loadVectors, unhex } from "./vectors.js";

const vectors = loadVectors();

test("the vector files hold vectors with unique names", () => {
  assert.ok(vectors.length >= 80, `only ${vectors.length} vectors`);
  assert.equal(new Set(vectors.map((v) => v.name)).size, vectors.length);
});

for (const v of vectors) {
  test(`vector ${v.file}: ${v.name}`, () => {
    assert.ok(v.description, "missing description");
    assert.equal(v.frames === undefined, v.error !== undefined, "exactly one of frames and error");
    const { frames, error } = decodeMessage(unhex(v.hex));
    const expected = (v.error ? v.frames_before_error : v.frames) ?? [];
    assert.deepEqual(frames.map(frameToJson), expected);
    if (v.error) {
      assert.deepEqual(error, v.error);
      return;
    }
    assert.equal(error, undefined);
    assert.ok(frames.length > 0);
    const built = expected.map(frameFromJson);
    const again = encodeMessage(built);
    if (v.canonical === false) {
      assert.notEqual(hex(again), v.hex, "marked non-canonical but re-encodes to its bytes");
      assert.deepEqual(decodeMessage(again).frames.map(frameToJson), expected);
    } else {
      assert.equal(hex(again), v.hex);
    }
  });
}

test("every error kind of the vector schema is exercised", () => {
  const kinds = new Set(vectors.flatMap((v) => (v.error ? [v.error.kind] : [])));
  for (const k of ["EmptyMessage", "TruncatedHeader", "UnsupportedVersion", "UnknownType", "ReservedFlags",
    "InvalidFlags", "WrongSession", "BadLength", "TruncatedPayload", "TruncatedField", "TrailingBytes",
    "InvalidUtf8", "InvalidValue", "DuplicateSetting"]) assert.ok(kinds.has(k), k);
});
