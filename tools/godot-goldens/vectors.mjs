// The values whose Godot encoding becomes a golden vector.
//
// ENCODE: [name, GDScript expression]. The engine evaluates the expression and prints
// var_to_bytes(value).hex_encode(). Names starting with "unsupported_" are values the C# codec
// must refuse (RID, Object, Callable, Signal); their bytes are kept so the tests can check that.
//
// DECODE: [name, hex input]. The engine runs bytes_to_var(input) and prints the type of the
// result, var_to_bytes(result) and whether it logged an error. These pin down how the engine
// treats non-canonical or malformed input (the C# decoder is compared with it, see the tests).
// Hex is little-endian bytes exactly as they travel.

export const ENCODE = [
  // Nil and bool
  ['nil', 'null'],
  ['bool_true', 'true'],
  ['bool_false', 'false'],

  // int: 32 bits unless it needs 64 (header flag 1 << 16)
  ['int_0', '0'],
  ['int_1', '1'],
  ['int_neg1', '-1'],
  ['int_i32_max', '2147483647'],
  ['int_i32_min', '-2147483648'],
  ['int_i32_max_plus1', '2147483648'],
  ['int_i32_min_minus1', '-2147483649'],
  ['int_big', '1234567890123'],
  ['int_i64_max', '9223372036854775807'],
  ['int_i64_min', '-9223372036854775807 - 1'],

  // float: float32 when exact, else float64 with the flag
  ['float_0', '0.0'],
  // A constant -0.0 in a script comes out as +0.0 here (the compiler seems to share one constant
  // slot for 0.0 and -0.0, which compare equal); "-0.0".to_float() makes a real -0.0 at run time.
  ['float_neg0_literal', '-0.0'],
  ['float_neg0', '"-0.0".to_float()'],
  ['float_1_5', '1.5'],
  ['float_neg_2_25', '-2.25'],
  ['float_0_1', '0.1'],
  ['float_third', '1.0 / 3.0'],
  ['float_pi', 'PI'],
  ['float_1e300', '1e300'],
  // GDScript parses this literal one ulp above the float32 maximum (0x47EFFFFFE0000001), so it is sent as f64;
  // the computed value is exactly float32's maximum and is sent as f32.
  ['float_f32_max_literal', '3.4028234663852886e38'],
  ['float_f32_max', 'pow(2.0, 127) * (2.0 - pow(2.0, -23))'],
  ['float_2_pow_100', '1267650600228229401496703205376.0'],
  ['float_inf', 'INF'],
  ['float_neg_inf', '-INF'],
  ['float_nan', 'NAN'],

  // String: u32 byte length + UTF-8, zero-padded to 4
  ['string_empty', '""'],
  ['string_a', '"a"'],
  ['string_abc', '"abc"'],
  ['string_abcd', '"abcd"'],
  ['string_abcde', '"abcde"'],
  ['string_escapes', '"line\\nbreak\\ttab \\"quote\\" back\\\\slash"'],
  ['string_unicode', '"héllo wörld ✓ 日本語 🎮"'],

  // Math types (single-precision build: real_t = float32)
  ['vector2', 'Vector2(1.5, -2.0)'],
  ['vector2_rounded', 'Vector2(0.1, 0.2)'],
  ['vector2i', 'Vector2i(-1, 2147483647)'],
  ['rect2', 'Rect2(1.0, 2.0, 3.0, 4.0)'],
  ['rect2i', 'Rect2i(-1, -2, 3, 4)'],
  ['vector3', 'Vector3(1.0, 2.0, 3.0)'],
  ['vector3i', 'Vector3i(-2147483648, 0, 7)'],
  ['transform2d', 'Transform2D(Vector2(1, 2), Vector2(3, 4), Vector2(5, 6))'],
  ['transform2d_identity', 'Transform2D.IDENTITY'],
  ['vector4', 'Vector4(1.0, -2.0, 0.5, 8.0)'],
  ['vector4i', 'Vector4i(1, -2, 3, -4)'],
  ['plane', 'Plane(Vector3(0, 1, 0), 5.0)'],
  ['quaternion', 'Quaternion(0.1, 0.2, 0.3, 0.9)'],
  ['quaternion_identity', 'Quaternion.IDENTITY'],
  ['aabb', 'AABB(Vector3(1, 2, 3), Vector3(4, 5, 6))'],
  ['basis', 'Basis(Vector3(1, 2, 3), Vector3(4, 5, 6), Vector3(7, 8, 9))'],
  ['transform3d', 'Transform3D(Basis(Vector3(1, 2, 3), Vector3(4, 5, 6), Vector3(7, 8, 9)), Vector3(10, 11, 12))'],
  ['projection', 'Projection(Vector4(1, 2, 3, 4), Vector4(5, 6, 7, 8), Vector4(9, 10, 11, 12), Vector4(13, 14, 15, 16))'],
  ['color', 'Color(0.1, 0.2, 0.3, 0.4)'],
  ['color_red', 'Color.RED'],

  // StringName (21) and NodePath (22)
  ['string_name', '&"hello"'],
  ['string_name_empty', '&""'],
  ['string_name_unicode', '&"ノード"'],
  ['node_path_absolute', '^"/root/Main/Player:position:x"'],
  ['node_path_relative', '^"../Sibling/Child"'],
  ['node_path_property_only', '^":position"'],
  ['node_path_empty', '^""'],
  ['node_path_dot', '^"."'],
  ['node_path_unicode', '^"Ünïcode/ノード:prop"'],

  // Dictionary (27) and Array (28), untyped and typed
  ['dict_empty', '{}'],
  ['dict_simple', '{"a": 1}'],
  ['dict_order', '{"z": 1, "a": 2, "m": 3}'],
  ['dict_mixed_keys', '{"a": 1, 2: "b", Vector2(1, 2): [1, 2], &"name": null, 1.5: true}'],
  ['dict_nested', '{"inner": {"x": {"y": []}}}'],
  ['array_empty', '[]'],
  ['array_mixed', '[1, "two", 3.5, null, true, 0.1]'],
  ['array_nested', '[[[]], [1, [2, [3]]], {}]'],
  ['array_typed_int', 'Array([1, 2, 3], TYPE_INT, &"", null)'],
  ['array_typed_string_empty', 'Array([], TYPE_STRING, &"", null)'],
  ['array_typed_vector3', 'Array([Vector3(1, 2, 3)], TYPE_VECTOR3, &"", null)'],
  ['array_typed_object_empty', 'Array([], TYPE_OBJECT, &"Node", null)'],
  ['array_typed_object_nulls', 'Array([null, null], TYPE_OBJECT, &"Node", null)'],
  ['array_of_typed_arrays', '[Array([1], TYPE_INT, &"", null), Array([&"a"], TYPE_STRING_NAME, &"", null)]'],
  ['dict_typed', 'Dictionary({"a": 1, "b": 2}, TYPE_STRING, &"", null, TYPE_INT, &"", null)'],
  ['dict_typed_key_only', 'Dictionary({1: "x"}, TYPE_INT, &"", null, TYPE_NIL, &"", null)'],
  ['dict_typed_value_only', 'Dictionary({"k": 2.5}, TYPE_NIL, &"", null, TYPE_FLOAT, &"", null)'],

  // Packed arrays
  ['packed_byte_empty', 'PackedByteArray()'],
  ['packed_byte_3', 'PackedByteArray([1, 2, 3])'],
  ['packed_byte_4', 'PackedByteArray([0, 255, 128, 7])'],
  ['packed_byte_5', 'PackedByteArray([9, 8, 7, 6, 5])'],
  ['packed_int32', 'PackedInt32Array([1, -1, 2147483647, -2147483648])'],
  ['packed_int32_empty', 'PackedInt32Array()'],
  ['packed_int64', 'PackedInt64Array([1, -1, 9223372036854775807, -9223372036854775807 - 1])'],
  ['packed_int64_empty', 'PackedInt64Array()'],
  ['packed_float32', 'PackedFloat32Array([1.5, 0.1, "-0.0".to_float(), INF, NAN])'],
  ['packed_float32_empty', 'PackedFloat32Array()'],
  ['packed_float64', 'PackedFloat64Array([0.1, 1e300, -2.5, "-0.0".to_float()])'],
  ['packed_float64_empty', 'PackedFloat64Array()'],
  ['packed_string', 'PackedStringArray(["", "a", "abc", "abcd", "日本"])'],
  ['packed_string_empty', 'PackedStringArray()'],
  ['packed_vector2', 'PackedVector2Array([Vector2(1, 2), Vector2(0.1, -3)])'],
  ['packed_vector2_empty', 'PackedVector2Array()'],
  ['packed_vector3', 'PackedVector3Array([Vector3(1, 2, 3), Vector3(-0.5, 0.25, 1e10)])'],
  ['packed_vector3_empty', 'PackedVector3Array()'],
  ['packed_color', 'PackedColorArray([Color(1, 0, 0, 1), Color(0.5, 0.25, 0.125, 0.0)])'],
  ['packed_color_empty', 'PackedColorArray()'],
  ['packed_vector4', 'PackedVector4Array([Vector4(1, 2, 3, 4), Vector4(-1, 0.5, 0, 0.1)])'],
  ['packed_vector4_empty', 'PackedVector4Array()'],

  // A message shaped like the gateway's
  ['message_like', '{"op": "commit", "id": 12345678901, "writes": [{"path": ^"/root/World/Player1", "props": {"position": Vector3(1, 2, 3), "hp": 100, "name": "Ann"}}], "ok": true}'],

  // Refused by the C# codec
  ['unsupported_rid', 'RID()'],
  ['unsupported_callable', 'Callable()'],
  ['unsupported_signal', 'Signal()'],
  ['unsupported_object', 'RefCounted.new()'],
  ['unsupported_array_of_rid', '[RID()]'],
];

// Builders for DECODE inputs.
const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32LE(n >>> 0); return b.toString('hex'); };
const i32 = (n) => { const b = Buffer.alloc(4); b.writeInt32LE(n); return b.toString('hex'); };
const i64 = (n) => { const b = Buffer.alloc(8); b.writeBigInt64LE(BigInt(n)); return b.toString('hex'); };
const f32 = (x) => { const b = Buffer.alloc(4); b.writeFloatLE(x); return b.toString('hex'); };
const f64 = (x) => { const b = Buffer.alloc(8); b.writeDoubleLE(x); return b.toString('hex'); };
const str = (bytesHex) => {
  const len = bytesHex.length / 2;
  const pad = (4 - (len % 4)) % 4;
  return u32(len) + bytesHex + '00'.repeat(pad);
};
const utf8 = (s) => Buffer.from(s, 'utf8').toString('hex');
const T = { NIL: 0, BOOL: 1, INT: 2, FLOAT: 3, STRING: 4, VECTOR2: 5, STRING_NAME: 21, NODE_PATH: 22, DICTIONARY: 27, ARRAY: 28, PACKED_BYTE: 29, PACKED_STRING: 34 };
const F64 = 1 << 16;

export const DECODE = [
  ['int_flag64_small', u32(T.INT | F64) + i64(5)],
  ['float_flag64_exact', u32(T.FLOAT | F64) + f64(1.5)],
  ['bool_2', u32(T.BOOL) + u32(2)],
  ['vector2_flag64', u32(T.VECTOR2 | F64) + f64(0.1) + f64(2.5)],
  ['string_padding_garbage', u32(T.STRING) + u32(1) + '61ffffff'],
  ['string_bom', u32(T.STRING) + str('efbbbf' + utf8('hi'))],
  ['string_embedded_nul', u32(T.STRING) + str(utf8('ab') + '00' + utf8('cd'))],
  ['string_invalid_utf8', u32(T.STRING) + str('61ff62')],
  ['string_overlong_utf8', u32(T.STRING) + str('c0af')],
  ['string_surrogate_utf8', u32(T.STRING) + str('eda080')],
  ['string_truncated', u32(T.STRING) + u32(8) + utf8('abcd')],
  ['string_negative_length', u32(T.STRING) + u32(0xffffffff)],
  ['string_missing_padding', u32(T.STRING) + u32(1) + '61'],
  ['packed_string_without_nul', u32(T.PACKED_STRING) + u32(1) + str(utf8('abc'))],
  ['packed_byte_missing_padding', u32(T.PACKED_BYTE) + u32(1) + 'aa'],
  ['packed_byte_huge_count', u32(T.PACKED_BYTE) + u32(0x7fffffff)],
  ['array_shared_bit', u32(T.ARRAY) + u32(0x80000001) + u32(T.INT) + i32(7)],
  ['array_count_too_big', u32(T.ARRAY) + u32(1000) + u32(T.NIL)],
  ['array_typed_mismatch', u32(T.ARRAY | (1 << 16)) + u32(T.INT) + u32(2) + u32(T.INT) + i32(1) + u32(T.STRING) + str(utf8('x'))],
  ['array_typed_int_with_float', u32(T.ARRAY | (1 << 16)) + u32(T.INT) + u32(1) + u32(T.FLOAT) + f32(2.0)],
  ['array_typed_float_with_int', u32(T.ARRAY | (1 << 16)) + u32(T.FLOAT) + u32(1) + u32(T.INT) + i32(2)],
  ['array_typed_string_with_stringname', u32(T.ARRAY | (1 << 16)) + u32(T.STRING) + u32(1) + u32(T.STRING_NAME) + str(utf8('s'))],
  ['array_typed_int_with_fractional_float', u32(T.ARRAY | (1 << 16)) + u32(T.INT) + u32(1) + u32(T.FLOAT) + f32(2.5)],
  ['array_typed_float_with_big_int', u32(T.ARRAY | (1 << 16)) + u32(T.FLOAT) + u32(1) + u32(T.INT) + i32(16777217)],
  ['array_typed_builtin_nil', u32(T.ARRAY | (1 << 16)) + u32(T.NIL) + u32(1) + u32(T.INT) + i32(5)],
  ['array_typed_builtin_out_of_range', u32(T.ARRAY | (1 << 16)) + u32(39) + u32(0)],
  ['array_typed_script_kind', u32(T.ARRAY | (3 << 16)) + str(utf8('res://x.gd')) + u32(0)],
  ['dict_typed_key_mismatch', u32(T.DICTIONARY | (1 << 16)) + u32(T.INT) + u32(1) + u32(T.STRING) + str(utf8('a')) + u32(T.NIL)],
  ['array_depth_100', u32(T.ARRAY) + u32(1) + (u32(T.ARRAY) + u32(1)).repeat(98) + u32(T.ARRAY) + u32(0)],
  ['dict_duplicate_key', u32(T.DICTIONARY) + u32(2) + u32(T.INT) + i32(1) + u32(T.STRING) + str(utf8('a')) + u32(T.INT) + i32(1) + u32(T.STRING) + str(utf8('b'))],
  ['dict_string_and_stringname_key', u32(T.DICTIONARY) + u32(2) + u32(T.STRING) + str(utf8('k')) + u32(T.INT) + i32(1) + u32(T.STRING_NAME) + str(utf8('k')) + u32(T.INT) + i32(2)],
  ['dict_int_and_float_key', u32(T.DICTIONARY) + u32(2) + u32(T.INT) + i32(1) + u32(T.INT) + i32(10) + u32(T.FLOAT) + f32(1.0) + u32(T.INT) + i32(20)],
  ['node_path_old_format', u32(T.NODE_PATH) + u32(3) + utf8('abc') + '00'],
  ['node_path_flag2', u32(T.NODE_PATH) + u32(0x80000001) + u32(0) + u32(2) + str(utf8('a')) + str(utf8('p'))],
  ['unknown_type', u32(39)],
  ['unknown_header_byte1', u32(T.INT | (1 << 8)) + i32(3)],
  ['string_with_flag', u32(T.STRING | F64) + str(utf8('x'))],
  ['trailing_bytes', u32(T.INT) + i32(3) + 'deadbeef'],
  ['empty_input', ''],
  ['object_as_id', u32(24 | F64) + i64(12345)],
  ['object_full', u32(24) + str(utf8('Node')) + u32(0)],
];
