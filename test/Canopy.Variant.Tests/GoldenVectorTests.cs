// The codec against the real Godot 4.6 engine (golden/godot-4.6-variants.txt, from tools/godot-goldens):
// - encode vectors: our value for each GDScript expression, written independently here, encodes to exactly the engine's
//   bytes (NodePath padding masked), the engine's bytes decode to that value, and re-encode to the same bytes;
// - decode vectors: for odd or malformed input we do what the engine's bytes_to_var does, except where listed below
//   (deliberately stricter: inputs the engine never writes).
namespace Canopy.Variant.Tests;

public sealed class GoldenVectorTests
{
    private static GodotVariant Arr(params GodotVariant[] items) => new VariantArray(items);

    private static GodotVariant Typed(VariantType type, params GodotVariant[] items) => new VariantArray(items, new ContainerType(type));

    private static GodotVariant Dict(params (GodotVariant Key, GodotVariant Value)[] entries) => new VariantDictionary(entries);

    private static GodotVariant Sn(string s) => new VariantStringName(s);

    private static GodotVariant Np(string s) => new VariantNodePath(s);

    private static double Bits(long bits) => BitConverter.Int64BitsToDouble(bits);

    private static readonly ContainerType EncodedObject = new(VariantType.Object, "EncodedObjectAsID");

    /// <summary>Our value for every golden expression; null = a value the codec refuses (Unsupported).</summary>
    private static readonly Dictionary<string, GodotVariant?> Expected = new()
    {
        ["nil"] = GodotVariant.Nil,
        ["bool_true"] = true,
        ["bool_false"] = false,
        ["int_0"] = 0,
        ["int_1"] = 1,
        ["int_neg1"] = -1,
        ["int_i32_max"] = int.MaxValue,
        ["int_i32_min"] = int.MinValue,
        ["int_i32_max_plus1"] = 2147483648L,
        ["int_i32_min_minus1"] = -2147483649L,
        ["int_big"] = 1234567890123L,
        ["int_i64_max"] = long.MaxValue,
        ["int_i64_min"] = long.MinValue,
        ["float_neg0_literal"] = 0.0, // the script's constant -0.0 reaches var_to_bytes as +0.0
        ["float_neg0"] = -0.0,
        ["float_0"] = 0.0,
        ["float_1_5"] = 1.5,
        ["float_neg_2_25"] = -2.25,
        ["float_0_1"] = 0.1,
        ["float_third"] = 1.0 / 3.0,
        ["float_pi"] = Math.PI,
        ["float_1e300"] = 1e300,
        ["float_f32_max_literal"] = Bits(0x47EFFFFFE0000001), // GDScript parses the literal one ulp high
        ["float_f32_max"] = (double)float.MaxValue,
        ["float_2_pow_100"] = Math.Pow(2, 100),
        ["float_inf"] = double.PositiveInfinity,
        ["float_neg_inf"] = double.NegativeInfinity,
        ["float_nan"] = Bits(0x7FF8000000000000), // Godot's NAN; .NET's double.NaN has the sign bit set
        ["string_empty"] = "",
        ["string_a"] = "a",
        ["string_abc"] = "abc",
        ["string_abcd"] = "abcd",
        ["string_abcde"] = "abcde",
        ["string_escapes"] = "line\nbreak\ttab \"quote\" back\\slash",
        ["string_unicode"] = "héllo wörld ✓ 日本語 🎮",
        ["vector2"] = new Vector2(1.5f, -2f),
        ["vector2_rounded"] = new Vector2(0.1f, 0.2f),
        ["vector2i"] = new Vector2I(-1, int.MaxValue),
        ["rect2"] = new Rect2(1, 2, 3, 4),
        ["rect2i"] = new Rect2I(-1, -2, 3, 4),
        ["vector3"] = new Vector3(1, 2, 3),
        ["vector3i"] = new Vector3I(int.MinValue, 0, 7),
        ["transform2d"] = new Transform2D(new Vector2(1, 2), new Vector2(3, 4), new Vector2(5, 6)),
        ["transform2d_identity"] = Transform2D.Identity,
        ["vector4"] = new Vector4(1, -2, 0.5f, 8),
        ["vector4i"] = new Vector4I(1, -2, 3, -4),
        ["plane"] = new Plane(new Vector3(0, 1, 0), 5),
        ["quaternion"] = new Quaternion(0.1f, 0.2f, 0.3f, 0.9f),
        ["quaternion_identity"] = Quaternion.Identity,
        ["aabb"] = new Aabb(new Vector3(1, 2, 3), new Vector3(4, 5, 6)),
        ["basis"] = Basis.FromColumns(new Vector3(1, 2, 3), new Vector3(4, 5, 6), new Vector3(7, 8, 9)),
        ["transform3d"] = new Transform3D(Basis.FromColumns(new Vector3(1, 2, 3), new Vector3(4, 5, 6), new Vector3(7, 8, 9)), new Vector3(10, 11, 12)),
        ["projection"] = new Projection(new Vector4(1, 2, 3, 4), new Vector4(5, 6, 7, 8), new Vector4(9, 10, 11, 12), new Vector4(13, 14, 15, 16)),
        ["color"] = new Color(0.1f, 0.2f, 0.3f, 0.4f),
        ["color_red"] = new Color(1, 0, 0, 1),
        ["string_name"] = Sn("hello"),
        ["string_name_empty"] = Sn(""),
        ["string_name_unicode"] = Sn("ノード"),
        ["node_path_absolute"] = new NodePath(["root", "Main", "Player"], ["position", "x"], isAbsolute: true),
        ["node_path_relative"] = new NodePath(["..", "Sibling", "Child"], [], isAbsolute: false),
        ["node_path_property_only"] = new NodePath([], ["position"], isAbsolute: false),
        ["node_path_empty"] = NodePath.Empty,
        ["node_path_dot"] = Np("."),
        ["node_path_unicode"] = Np("Ünïcode/ノード:prop"),
        ["dict_empty"] = VariantDictionary.Empty,
        ["dict_simple"] = Dict(("a", 1)),
        ["dict_order"] = Dict(("z", 1), ("a", 2), ("m", 3)),
        ["dict_mixed_keys"] = Dict(("a", 1), (2, "b"), (new Vector2(1, 2), Arr(1, 2)), (Sn("name"), GodotVariant.Nil), (1.5, true)),
        ["dict_nested"] = Dict(("inner", Dict(("x", Dict(("y", VariantArray.Empty)))))),
        ["array_empty"] = VariantArray.Empty,
        ["array_mixed"] = Arr(1, "two", 3.5, GodotVariant.Nil, true, 0.1),
        ["array_nested"] = Arr(Arr(VariantArray.Empty), Arr(1, Arr(2, Arr(3))), VariantDictionary.Empty),
        ["array_typed_int"] = Typed(VariantType.Int, 1, 2, 3),
        ["array_typed_string_empty"] = Typed(VariantType.String),
        ["array_typed_vector3"] = Typed(VariantType.Vector3, new Vector3(1, 2, 3)),
        ["array_typed_object_empty"] = new VariantArray([], EncodedObject), // var_to_bytes writes no real class name
        ["array_typed_object_nulls"] = new VariantArray([GodotVariant.Nil, GodotVariant.Nil], EncodedObject),
        ["array_of_typed_arrays"] = Arr(Typed(VariantType.Int, 1), Typed(VariantType.StringName, Sn("a"))),
        ["dict_typed"] = new VariantDictionary(
            [KeyValuePair.Create<GodotVariant, GodotVariant>("a", 1), KeyValuePair.Create<GodotVariant, GodotVariant>("b", 2)],
            new ContainerType(VariantType.String),
            new ContainerType(VariantType.Int)),
        ["dict_typed_key_only"] = new VariantDictionary([KeyValuePair.Create<GodotVariant, GodotVariant>(1, "x")], new ContainerType(VariantType.Int)),
        ["dict_typed_value_only"] = new VariantDictionary([KeyValuePair.Create<GodotVariant, GodotVariant>("k", 2.5)], valueType: new ContainerType(VariantType.Float)),
        ["packed_byte_empty"] = new PackedByteArray([]),
        ["packed_byte_3"] = new PackedByteArray([1, 2, 3]),
        ["packed_byte_4"] = new PackedByteArray([0, 255, 128, 7]),
        ["packed_byte_5"] = new PackedByteArray([9, 8, 7, 6, 5]),
        ["packed_int32"] = new PackedInt32Array([1, -1, int.MaxValue, int.MinValue]),
        ["packed_int32_empty"] = new PackedInt32Array([]),
        ["packed_int64"] = new PackedInt64Array([1, -1, long.MaxValue, long.MinValue]),
        ["packed_int64_empty"] = new PackedInt64Array([]),
        ["packed_float32"] = new PackedFloat32Array([1.5f, 0.1f, -0f, float.PositiveInfinity, BitConverter.Int32BitsToSingle(0x7FC00000)]),
        ["packed_float32_empty"] = new PackedFloat32Array([]),
        ["packed_float64"] = new PackedFloat64Array([0.1, 1e300, -2.5, -0.0]),
        ["packed_float64_empty"] = new PackedFloat64Array([]),
        ["packed_string"] = new PackedStringArray("", "a", "abc", "abcd", "日本"),
        ["packed_string_empty"] = new PackedStringArray(),
        ["packed_vector2"] = new PackedVector2Array([new Vector2(1, 2), new Vector2(0.1f, -3)]),
        ["packed_vector2_empty"] = new PackedVector2Array([]),
        ["packed_vector3"] = new PackedVector3Array([new Vector3(1, 2, 3), new Vector3(-0.5f, 0.25f, 1e10f)]),
        ["packed_vector3_empty"] = new PackedVector3Array([]),
        ["packed_color"] = new PackedColorArray([new Color(1, 0, 0, 1), new Color(0.5f, 0.25f, 0.125f, 0f)]),
        ["packed_color_empty"] = new PackedColorArray([]),
        ["packed_vector4"] = new PackedVector4Array([new Vector4(1, 2, 3, 4), new Vector4(-1, 0.5f, 0, 0.1f)]),
        ["packed_vector4_empty"] = new PackedVector4Array([]),
        ["message_like"] = Dict(
            ("op", "commit"),
            ("id", 12345678901L),
            ("writes", Arr(Dict(
                ("path", Np("/root/World/Player1")),
                ("props", Dict(("position", new Vector3(1, 2, 3)), ("hp", 100), ("name", "Ann")))))),
            ("ok", true)),
        ["unsupported_rid"] = null,
        ["unsupported_callable"] = null,
        ["unsupported_signal"] = null,
        ["unsupported_object"] = null,
        ["unsupported_array_of_rid"] = null,
    };

    /// <summary>Decode vectors the engine accepts (it returns a value) but we refuse, on purpose, with this error.</summary>
    private static readonly Dictionary<string, VariantErrorCode> StricterThanEngine = new()
    {
        // Typed containers: the engine converts int<->float and String<->StringName elements and drops other mismatches
        // (logging an error); var_to_bytes never writes such bytes.
        ["array_typed_mismatch"] = VariantErrorCode.ContainerTypeMismatch,
        ["array_typed_int_with_float"] = VariantErrorCode.ContainerTypeMismatch,
        ["array_typed_float_with_int"] = VariantErrorCode.ContainerTypeMismatch,
        ["array_typed_string_with_stringname"] = VariantErrorCode.ContainerTypeMismatch,
        ["array_typed_int_with_fractional_float"] = VariantErrorCode.ContainerTypeMismatch,
        ["array_typed_float_with_big_int"] = VariantErrorCode.ContainerTypeMismatch,
        ["dict_typed_key_mismatch"] = VariantErrorCode.ContainerTypeMismatch,
        ["array_typed_script_kind"] = VariantErrorCode.Unsupported, // written only with full objects
        ["object_as_id"] = VariantErrorCode.Unsupported,
        ["unknown_header_byte1"] = VariantErrorCode.InvalidHeader, // the engine ignores unused header bits
        ["string_with_flag"] = VariantErrorCode.InvalidHeader,
        ["array_depth_100"] = VariantErrorCode.TooDeep, // default MaxDepth 64; the engine's limit is 1024
    };

    /// <summary>Decode vectors the engine refuses, and the error we give.</summary>
    private static readonly Dictionary<string, VariantErrorCode> RefusedByBoth = new()
    {
        ["string_invalid_utf8"] = VariantErrorCode.InvalidUtf8,
        ["string_overlong_utf8"] = VariantErrorCode.InvalidUtf8,
        ["string_surrogate_utf8"] = VariantErrorCode.InvalidUtf8,
        ["string_truncated"] = VariantErrorCode.InvalidLength,
        ["string_negative_length"] = VariantErrorCode.InvalidLength,
        ["string_missing_padding"] = VariantErrorCode.InvalidLength,
        ["packed_byte_huge_count"] = VariantErrorCode.InvalidLength,
        ["array_count_too_big"] = VariantErrorCode.InvalidLength,
        ["array_typed_builtin_out_of_range"] = VariantErrorCode.InvalidContainerType,
        ["node_path_old_format"] = VariantErrorCode.InvalidNodePath,
        ["unknown_type"] = VariantErrorCode.UnknownType,
        ["empty_input"] = VariantErrorCode.Truncated,
        ["object_full"] = VariantErrorCode.Unsupported,
    };

    public static IEnumerable<object[]> EncodeNames() => Golden.EncodeNames();

    public static IEnumerable<object[]> DecodeNames() => Golden.DecodeNames();

    [Fact]
    public void The_golden_file_comes_from_Godot_4_6_and_every_vector_has_an_expectation()
    {
        var header = File.ReadLines(Golden.Path).TakeWhile(l => l.StartsWith('#')).ToList();
        Assert.Contains(header, l => l.Contains("Godot Engine v4.6.stable.official.89cea1439", StringComparison.Ordinal));
        Assert.True(Golden.Encode.Count >= 100, $"only {Golden.Encode.Count} encode vectors");
        Assert.Equal(Expected.Keys.Order(StringComparer.Ordinal), Golden.Encode.Select(v => v.Name).Order(StringComparer.Ordinal));
        var decodeNames = Golden.Decode.Select(v => v.Name).ToHashSet();
        Assert.All(StricterThanEngine.Keys.Concat(RefusedByBoth.Keys), n => Assert.Contains(n, decodeNames));
        Assert.Equal(Golden.Decode.Count(v => v.EngineFailed), RefusedByBoth.Count);
    }

    [Theory]
    [MemberData(nameof(EncodeNames))]
    public void Encode_vector_matches_the_engine(string name)
    {
        var golden = Golden.EncodeNamed(name);
        var expected = Expected[name];
        if (expected is null)
        {
            Assert.False(VariantCodec.TryDecode(golden.Bytes, out _, out var error));
            Assert.Equal(VariantErrorCode.Unsupported, error.Code);
            Assert.Throws<VariantFormatException>(() => VariantCodec.Decode(golden.Bytes));
            return;
        }

        // Our value encodes to the engine's bytes.
        Bytes.EqualMaskingNodePathPadding(golden.Bytes, expected, $"{name} = {golden.Expression}");

        // The engine's bytes decode to our value, and re-encode to the same bytes.
        var decoded = VariantCodec.Decode(golden.Bytes);
        Assert.True(expected.Equals(decoded), $"{name}: decoded {decoded}, expected {expected}");
        Assert.Equal(expected.Type, decoded.Type);
        Assert.Equal(expected.GetHashCode(), decoded.GetHashCode());
        Bytes.EqualMaskingNodePathPadding(golden.Bytes, decoded, $"{name} re-encoded");
    }

    [Fact]
    public void Floats_keep_their_exact_bits_through_the_engine_vectors()
    {
        // Equality treats NaN = NaN and 0 = -0; the bytes are what must match exactly (checked above) — check the values too.
        Assert.Equal(0x7FF8000000000000, BitConverter.DoubleToInt64Bits(((VariantFloat)VariantCodec.Decode(Golden.EncodeNamed("float_nan").Bytes)).Value));
        Assert.True(double.IsNegative(((VariantFloat)VariantCodec.Decode(Golden.EncodeNamed("float_neg0").Bytes)).Value));
        Assert.False(double.IsNegative(((VariantFloat)VariantCodec.Decode(Golden.EncodeNamed("float_neg0_literal").Bytes)).Value));
        Assert.Equal(0x7FC00000, BitConverter.SingleToInt32Bits(((PackedFloat32Array)VariantCodec.Decode(Golden.EncodeNamed("packed_float32").Bytes))[4]));
    }

    [Fact]
    public void NodePath_padding_from_the_engine_is_not_zero_but_decodes()
    {
        // "Player" is 6 bytes: 2 bytes of padding, which the engine leaves as whatever was in memory.
        var golden = Golden.EncodeNamed("node_path_absolute").Bytes;
        var ours = VariantCodec.Encode(VariantCodec.Decode(golden));
        Assert.NotEqual(Bytes.Hex(golden), Bytes.Hex(ours));
        Assert.Equal(Expected["node_path_absolute"], VariantCodec.Decode(golden));
        Assert.Equal("/root/Main/Player:position:x", ((VariantNodePath)VariantCodec.Decode(golden)).Value.ToString());
    }

    [Theory]
    [MemberData(nameof(DecodeNames))]
    public void Decode_vector_behaves_as_the_engine(string name)
    {
        var v = Golden.DecodeNamed(name);
        var ok = VariantCodec.TryDecodePrefix(v.Input, out var value, out var used, out var error);
        if (StricterThanEngine.TryGetValue(name, out var stricterCode))
        {
            Assert.False(v.EngineFailed, $"{name}: the engine refuses it now; move it to RefusedByBoth");
            Assert.False(ok, $"{name}: decoded {value}, expected {stricterCode}");
            Assert.Equal(stricterCode, error!.Code);
            return;
        }

        if (RefusedByBoth.TryGetValue(name, out var code))
        {
            Assert.True(v.EngineFailed, $"{name}: the engine accepts it now ({v.EngineErrors})");
            Assert.False(ok, $"{name}: decoded {value}, engine refused it: {v.EngineErrors}");
            Assert.Equal(code, error!.Code);
            return;
        }

        Assert.False(v.EngineFailed, $"{name}: engine refused it ({v.EngineErrors}); add an expectation");
        Assert.True(ok, $"{name}: {error}; the engine decoded it");
        Assert.Equal(v.EngineType, (int)value!.Type);
        Assert.True(used <= v.Input.Length);
        Bytes.EqualMaskingNodePathPadding(v.EngineReencoded, value, $"{name} (engine: {v.EngineErrors})");
    }

    [Fact]
    public void Deep_nesting_that_the_engine_accepts_decodes_with_a_higher_MaxDepth()
    {
        var v = Golden.DecodeNamed("array_depth_100");
        var value = VariantCodec.Decode(v.Input, new VariantDecodeOptions { MaxDepth = 128 });
        Bytes.EqualMaskingNodePathPadding(v.EngineReencoded, value, "array_depth_100");
        Assert.False(VariantCodec.TryDecode(v.Input, out _, out var error, new VariantDecodeOptions { MaxDepth = 98 }));
        Assert.Equal(VariantErrorCode.TooDeep, error.Code);
        Assert.True(VariantCodec.TryDecode(v.Input, out _, out _, new VariantDecodeOptions { MaxDepth = 99 }));
    }

    [Fact]
    public void Trailing_bytes_are_ignored_by_prefix_decoding_as_by_the_engine_and_refused_by_Decode()
    {
        var v = Golden.DecodeNamed("trailing_bytes");
        Assert.True(VariantCodec.TryDecodePrefix(v.Input, out var value, out var used, out _));
        Assert.Equal(8, used);
        Assert.Equal<GodotVariant>(3, value);
        Assert.False(VariantCodec.TryDecode(v.Input, out _, out var error));
        Assert.Equal(VariantErrorCode.TrailingBytes, error.Code);
        Assert.Equal(8, error.Offset);
    }

    [Fact]
    public void Engine_dictionary_key_rules_hold()
    {
        // Repeated key: first position, last value. String and StringName with the same text: one key (the first).
        var dup = (VariantDictionary)VariantCodec.Decode(Golden.DecodeNamed("dict_duplicate_key").Input);
        Assert.Equal(Dict((1, "b")), dup);
        var mixed = (VariantDictionary)VariantCodec.Decode(Golden.DecodeNamed("dict_string_and_stringname_key").Input);
        Assert.Single(mixed);
        Assert.IsType<VariantString>(mixed.Entries[0].Key);
        Assert.Equal<GodotVariant>(2, mixed[Sn("k")]);
        var numeric = (VariantDictionary)VariantCodec.Decode(Golden.DecodeNamed("dict_int_and_float_key").Input);
        Assert.Equal(2, numeric.Count);
        Assert.Equal<GodotVariant>(10, numeric[1]);
        Assert.Equal<GodotVariant>(20, numeric[1.0]);
    }

    [Fact]
    public void Expected_values_are_what_they_claim()
    {
        // Guards against a table typo hiding a codec bug: a few values checked field by field.
        var basis = ((VariantBasis)Expected["basis"]!).Value;
        Assert.Equal(new Vector3(1, 4, 7), basis.Row0);
        Assert.Equal(new Vector3(1, 2, 3), basis.X);
        var path = ((VariantNodePath)Expected["node_path_unicode"]!).Value;
        Assert.Equal(["Ünïcode", "ノード"], path.Names.ToArray());
        Assert.Equal(["prop"], path.SubNames.ToArray());
        Assert.False(path.IsAbsolute);
    }
}
