// Random round trips of every supported Variant (CsCheck, fixed seeds), the encoder's canonical choices, and the value
// model (equality, dictionary key rules, typed containers, NodePath parsing, values that cannot be encoded).
using System.Buffers;
using CsCheck;

namespace Canopy.Variant.Tests;

public sealed class RoundTripTests
{
    [Fact]
    public void Random_values_round_trip_byte_for_byte()
    {
        Seeds.ForSeeds(VariantGen.Any, 1500, salt: 1, value =>
        {
            var bytes = VariantCodec.Encode(value);
            Assert.Equal(0, bytes.Length % 4);

            var decoded = VariantCodec.Decode(bytes);
            Assert.True(value.Equals(decoded), $"decoded {decoded}");
            Assert.Equal(value.GetHashCode(), decoded.GetHashCode());
            Assert.Equal(bytes, VariantCodec.Encode(decoded));

            // Appending to a buffer writer gives the same bytes after what is already there.
            var writer = new ArrayBufferWriter<byte>(1);
            writer.Write<byte>([0xAA]);
            VariantCodec.Encode(value, writer);
            Assert.Equal(bytes, writer.WrittenSpan[1..].ToArray());

            // Prefix decoding reports the exact length, also with bytes after it.
            var padded = bytes.Concat(new byte[] { 1, 2, 3, 4, 5 }).ToArray();
            Assert.True(VariantCodec.TryDecodePrefix(padded, out var again, out var used, out _));
            Assert.Equal(bytes.Length, used);
            Assert.True(value.Equals(again));
        }, print: v => v.ToString());
    }

    [Fact]
    public void Random_values_nested_in_a_message_round_trip()
    {
        var message = Gen.Select(VariantGen.Any.Array[0, 6], VariantGen.Text.Array[0, 6], (values, keys) =>
            (GodotVariant)new VariantDictionary(keys.Zip(values, (k, v) => KeyValuePair.Create<GodotVariant, GodotVariant>(k, v))));
        Seeds.ForSeeds(message, 300, salt: 2, value =>
        {
            var bytes = VariantCodec.Encode(value);
            Assert.Equal(bytes, VariantCodec.Encode(VariantCodec.Decode(bytes)));
        }, print: v => v.ToString());
    }

    [Theory]
    [InlineData(0L, "0200000000000000")]
    [InlineData(-1L, "02000000ffffffff")]
    [InlineData(2147483647L, "02000000ffffff7f")]
    [InlineData(2147483648L, "020001000000008000000000")]
    [InlineData(-2147483648L, "0200000000000080")]
    [InlineData(-2147483649L, "02000100ffffff7fffffffff")]
    public void Ints_use_32_bits_unless_they_need_64(long value, string hex) =>
        Assert.Equal(hex, Bytes.Hex(VariantCodec.Encode(value)));

    [Theory]
    [InlineData(1.5, "030000000000c03f")]
    [InlineData(0.1, "030001009a9999999999b93f")]
    [InlineData(16777216.0, "030000000000804b")]
    [InlineData(16777217.0, "030001000000001000007041")]
    [InlineData(1e39, "030001001d4a9cf487820748")]
    public void Floats_use_32_bits_when_exact(double value, string hex) =>
        Assert.Equal(hex, Bytes.Hex(VariantCodec.Encode(value)));

    [Fact]
    public void NaN_is_always_sent_as_64_bits_with_its_payload()
    {
        Assert.Equal("03000100000000000000f8ff", Bytes.Hex(VariantCodec.Encode(double.NaN))); // .NET's NaN has the sign bit
        var payload = BitConverter.Int64BitsToDouble(0x7FF0000000000001);
        var back = (VariantFloat)VariantCodec.Decode(VariantCodec.Encode(payload));
        Assert.Equal(0x7FF0000000000001, BitConverter.DoubleToInt64Bits(back.Value));
    }

    [Fact]
    public void Strings_are_padded_with_zeros_and_packed_strings_carry_a_NUL()
    {
        Assert.Equal("0400000005000000" + "6162636465000000", Bytes.Hex(VariantCodec.Encode("abcde")));
        Assert.Equal("2200000001000000" + "04000000616263" + "00", Bytes.Hex(VariantCodec.Encode(new PackedStringArray("abc"))));
        Assert.Equal("160000000100008000000000000000000100000061000000", Bytes.Hex(VariantCodec.Encode(NodePath.Parse("a"))));
    }

    [Theory]
    [InlineData("a", 0, "b")]
    [InlineData("", 0xD800, "")]
    [InlineData("x", 0xDC00, "y")]
    [InlineData("", 0xFEFF, "bom")]
    public void Strings_Godot_cannot_hold_are_refused_by_the_encoder(string before, int code, string after)
    {
        // NUL ends a Godot string; lone surrogates are not UTF-8; the decoder drops a leading U+FEFF as a BOM.
        var s = before + (char)code + after;
        Assert.Throws<VariantEncodeException>(() => VariantCodec.Encode(s));
        Assert.Throws<VariantEncodeException>(() => VariantCodec.Encode(new VariantStringName(s)));
        Assert.Throws<VariantEncodeException>(() => VariantCodec.Encode(new PackedStringArray(s)));
        Assert.Throws<VariantEncodeException>(() => VariantCodec.Encode(new NodePath([s], [], false)));
        Assert.Throws<VariantEncodeException>(() => VariantCodec.Encode(new VariantArray(1, new VariantArray(s))));
        Assert.Throws<VariantEncodeException>(() => VariantCodec.Encode(new VariantArray([], new ContainerType(VariantType.Object, s))));
    }

    [Fact]
    public void U_FEFF_is_fine_inside_a_string() =>
        Assert.Equal<GodotVariant>("a\uFEFF", VariantCodec.Decode(VariantCodec.Encode("a\uFEFF")));

    [Fact]
    public void Nesting_deeper_than_the_engine_accepts_is_refused_by_the_encoder()
    {
        GodotVariant deep = VariantArray.Empty;
        for (var i = 0; i < VariantCodec.MaxEncodeDepth; i++)
        {
            deep = new VariantArray(deep);
        }

        var bytes = VariantCodec.Encode(deep); // depth 1024: the engine's limit, accepted
        Assert.Equal(8 * (VariantCodec.MaxEncodeDepth + 1), bytes.Length);
        Assert.Equal(deep, VariantCodec.Decode(bytes, new VariantDecodeOptions { MaxDepth = VariantDecodeOptions.DepthCeiling }));
        Assert.Throws<VariantEncodeException>(() => VariantCodec.Encode(new VariantArray(deep)));
    }

    [Fact]
    public void Equality_follows_Godot_for_floats_and_types()
    {
        Assert.Equal<GodotVariant>(double.NaN, BitConverter.Int64BitsToDouble(0x7FF8000000000000));
        Assert.Equal<GodotVariant>(0.0, -0.0);
        Assert.NotEqual<GodotVariant>(1, 1.0);
        Assert.NotEqual<GodotVariant>("a", new VariantStringName("a"));
        Assert.False(new VariantArray(1).Equals(new VariantArray([1], new ContainerType(VariantType.Int))));
        Assert.False(new PackedInt32Array([1]).Equals(new PackedInt64Array([1])));
        Assert.Equal<GodotVariant>(new Vector2(float.NaN, 0f), new Vector2(float.NaN, -0f));
        Assert.True(GodotVariant.KeyComparer.Equals("a", new VariantStringName("a")));
        Assert.Equal(GodotVariant.KeyComparer.GetHashCode("a"), GodotVariant.KeyComparer.GetHashCode(new VariantStringName("a")));
    }

    [Fact]
    public void Dictionaries_keep_insertion_order_and_Godot_key_rules()
    {
        var d = new VariantDictionary(("z", 1), ("a", 2), (new VariantStringName("z"), 3), (1, "int"), (1.0, "float"));
        Assert.Equal(["z", "a", 1, 1.0], d.Entries.Select(e => e.Key));
        Assert.Equal<GodotVariant>(3, d["z"]);
        Assert.Equal<GodotVariant>(3, d[new VariantStringName("z")]);
        Assert.Equal<GodotVariant>("int", d[1]);
        Assert.Equal<GodotVariant>("float", d[1.0]);
        Assert.False(d.TryGetValue(2, out _));
        Assert.Throws<KeyNotFoundException>(() => d[2]);
        Assert.NotEqual<GodotVariant>(new VariantDictionary(("a", 1), ("b", 2)), new VariantDictionary(("b", 2), ("a", 1)));

        // Containers as keys (Godot allows them).
        var k = new VariantDictionary((new VariantArray(1, 2), "pair"));
        Assert.Equal<GodotVariant>("pair", k[new VariantArray(1, 2)]);
    }

    [Fact]
    public void Typed_containers_admit_only_their_type()
    {
        Assert.Throws<ArgumentException>(() => new VariantArray(["x"], new ContainerType(VariantType.Int)));
        Assert.Throws<ArgumentException>(() => new VariantArray([1.0], new ContainerType(VariantType.Int)));
        Assert.Throws<ArgumentException>(() => new VariantArray([1], new ContainerType(VariantType.Object, "Node")));
        Assert.Throws<ArgumentException>(() => new VariantDictionary([KeyValuePair.Create<GodotVariant, GodotVariant>(1, 1)], new ContainerType(VariantType.String)));
        Assert.Throws<ArgumentException>(() => new VariantDictionary([KeyValuePair.Create<GodotVariant, GodotVariant>("a", "b")], valueType: new ContainerType(VariantType.Int)));
        Assert.Throws<ArgumentException>(() => new ContainerType(VariantType.Int, "Node"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ContainerType((VariantType)39));
        _ = new VariantArray([GodotVariant.Nil], new ContainerType(VariantType.Object, "Node"));
    }

    [Theory]
    [InlineData("", "", 0, 0, false)]
    [InlineData("/", "/", 0, 0, true)]
    [InlineData("/root/Main/Player:position:x", "/root/Main/Player:position:x", 3, 2, true)]
    [InlineData("../Sibling", "../Sibling", 2, 0, false)]
    [InlineData(":position", ":position", 0, 1, false)]
    [InlineData("a//b/", "a/b", 2, 0, false)]
    [InlineData("a:b:", "a:b", 1, 1, false)]
    [InlineData("%Unique/x", "%Unique/x", 2, 0, false)]
    public void NodePaths_parse_as_in_Godot(string text, string printed, int names, int subNames, bool absolute)
    {
        var p = NodePath.Parse(text);
        Assert.Equal(printed, p.ToString());
        Assert.Equal(names, p.Names.Length);
        Assert.Equal(subNames, p.SubNames.Length);
        Assert.Equal(absolute, p.IsAbsolute);
        Assert.Equal(p, NodePath.Parse(p.ToString()));
    }

    [Fact]
    public void A_NodePath_with_an_empty_subname_in_the_middle_is_invalid() =>
        Assert.Throws<FormatException>(() => NodePath.Parse("a::b"));

    [Fact]
    public void Values_render_readably()
    {
        GodotVariant v = new VariantDictionary(
            ("s", "a\"b"),
            ("n", new VariantStringName("x")),
            ("p", NodePath.Parse("/a:b")),
            ("v", new Vector3(1, 2.5f, -3)),
            ("t", new VariantArray([1], new ContainerType(VariantType.Int))),
            ("f", 0.1));
        Assert.Equal("{\"s\": \"a\\\"b\", \"n\": &\"x\", \"p\": ^\"/a:b\", \"v\": Vector3(1, 2.5, -3), \"t\": Array[Int][1], \"f\": 0.1}", v.ToString());
    }
}
