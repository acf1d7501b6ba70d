// Decoding untrusted bytes: every truncation and thousands of mutations of valid encodings, random bytes, lying lengths,
// deep nesting, unknown and unsupported types, stray header bits and the size limits. TryDecode must return an error
// (never throw), and memory must stay proportional to the input (measured with the thread's allocation counter).
using System.Buffers.Binary;
using CsCheck;

namespace Canopy.Variant.Tests;

public sealed class HostileInputTests
{
    private static byte[] U32(params uint[] words)
    {
        var b = new byte[words.Length * 4];
        for (var i = 0; i < words.Length; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(i * 4), words[i]);
        }

        return b;
    }

    private static VariantDecodeError Fails(ReadOnlySpan<byte> input, VariantDecodeOptions? options = null)
    {
        Assert.False(VariantCodec.TryDecode(input, out var value, out var error, options), $"decoded {value}");
        return error;
    }

    private static IEnumerable<byte[]> ValidEncodings() =>
        Golden.Encode.Where(v => !v.Name.StartsWith("unsupported_", StringComparison.Ordinal)).Select(v => v.Bytes);

    /// <summary>Bytes allocated on this thread while running <paramref name="action"/> (after one warm-up run).</summary>
    private static long Allocated(Action action)
    {
        action();
        var before = GC.GetAllocatedBytesForCurrentThread();
        action();
        return GC.GetAllocatedBytesForCurrentThread() - before;
    }

    [Fact]
    public void Every_truncation_of_every_golden_vector_is_an_error()
    {
        foreach (var full in ValidEncodings())
        {
            for (var n = 0; n < full.Length; n++)
            {
                if (VariantCodec.TryDecode(full.AsSpan(0, n), out var value, out var error))
                {
                    // Only a PackedByteArray's final padding may be missing (the engine tolerates that too).
                    Assert.Equal(full, VariantCodec.Encode(value));
                    Assert.Contains((byte)VariantType.PackedByteArray, full);
                    continue;
                }

                Assert.True(
                    error.Code is VariantErrorCode.Truncated or VariantErrorCode.InvalidLength,
                    $"{Bytes.Hex(full)} cut at {n}: {error}");
                Assert.InRange(error.Offset, 0, n);
            }
        }
    }

    [Fact]
    public void Mutated_golden_vectors_never_throw_and_what_decodes_re_encodes_canonically()
    {
        var random = new Random(20261125);
        var decoded = 0;
        foreach (var full in ValidEncodings())
        {
            for (var i = 0; i < 150; i++)
            {
                var bytes = (byte[])full.Clone();
                var edits = random.Next(1, 4);
                for (var e = 0; e < edits; e++)
                {
                    var at = random.Next(bytes.Length);
                    switch (random.Next(4))
                    {
                        case 0: bytes[at] ^= (byte)(1 << random.Next(8)); break;
                        case 1: bytes[at] = (byte)random.Next(256); break;
                        case 2: bytes[at] = 0xFF; break;
                        default: bytes[at & ~3] = (byte)random.Next(40); break; // a plausible type byte
                    }
                }

                if (random.Next(5) == 0)
                {
                    bytes = bytes[..random.Next(bytes.Length)];
                }

                if (VariantCodec.TryDecodePrefix(bytes, out var value, out var used, out _))
                {
                    decoded++;
                    Assert.InRange(used, 4, bytes.Length);
                    var canonical = VariantCodec.Encode(value);
                    Assert.True(value.Equals(VariantCodec.Decode(canonical)));
                }
            }
        }

        Assert.True(decoded > 1000, $"only {decoded} mutations decoded: the mutations are too destructive to test much");
    }

    [Fact]
    public void Random_bytes_never_throw()
    {
        var input = Gen.Select(Gen.Int[0, 39], Gen.Int[0, 3], Gen.Byte.Array[0, 64], (type, flags, rest) =>
            U32((uint)type | ((uint)flags << 16)).Concat(rest).ToArray());
        Seeds.ForSeeds(input, 3000, salt: 3, bytes =>
        {
            if (VariantCodec.TryDecode(bytes, out var value, out _))
            {
                Assert.True(value.Equals(VariantCodec.Decode(VariantCodec.Encode(value))));
            }
        });
    }

    public static TheoryData<string, byte[]> LyingLengths() => new()
    {
        { "String", U32(4, 0x7FFF_FFFF, 0x61) },
        { "String negative", U32(4, 0xFFFF_FFFF, 0x61) },
        { "StringName", U32(21, 0x7FFF_FFF0) },
        { "NodePath names", U32(22, 0xFFFF_FFFF, 0, 0) },
        { "NodePath subnames", U32(22, 0x8000_0000, 0xFFFF_FFFF, 0) },
        { "NodePath obsolete subname overflow", U32(22, 0x8000_0000, 0xFFFF_FFFF, 2) },
        { "NodePath name length", U32(22, 0x8000_0001, 0, 0, 0x7FFF_FFFF) },
        { "Array", U32(28, 0x7FFF_FFFF, 0) },
        { "Array shared bit", U32(28, 0xFFFF_FFFF, 0) },
        { "typed Array class name", U32(28 | (2 << 16), 0x7FFF_FFFF) },
        { "Dictionary", U32(27, 0x7FFF_FFFF, 0, 0) },
        { "PackedByteArray", U32(29, 0x7FFF_FFFF, 0) },
        { "PackedByteArray negative", U32(29, 0x8000_0000, 0) },
        { "PackedInt32Array", U32(30, 0x4000_0000, 0) },
        { "PackedInt32Array overflow", U32(30, 0x7FFF_FFFF, 0) },
        { "PackedInt64Array", U32(31, 0x2000_0000, 0) },
        { "PackedFloat32Array", U32(32, 0x7FFF_FFFF) },
        { "PackedFloat64Array", U32(33, 0x7FFF_FFFF) },
        { "PackedStringArray", U32(34, 0x7FFF_FFFF, 4) },
        { "PackedStringArray item", U32(34, 1, 0x7FFF_FFFF) },
        { "PackedVector2Array", U32(35, 0x1000_0000, 0) },
        { "PackedVector2Array 64-bit", U32(35 | (1 << 16), 0x1000_0000, 0) },
        { "PackedVector3Array", U32(36, 0x7FFF_FFFF, 0) },
        { "PackedColorArray", U32(37, 0x1000_0000, 0) },
        { "PackedVector4Array 64-bit", U32(38 | (1 << 16), 0x0400_0000, 0) },
    };

    [Theory]
    [MemberData(nameof(LyingLengths))]
    public void A_lying_length_is_an_error_without_a_large_allocation(string what, byte[] input)
    {
        var error = Fails(input);
        Assert.True(error.Code is VariantErrorCode.InvalidLength or VariantErrorCode.Truncated, $"{what}: {error}");
        Assert.InRange(Allocated(() => VariantCodec.TryDecode(input, out _, out _)), 0, 4096);
    }

    [Fact]
    public void Nested_containers_that_each_claim_the_whole_input_do_not_multiply_memory()
    {
        // 64 levels of Array (and Dictionary), each claiming as many items as the rest of a 1 MiB input could hold,
        // then garbage. Preallocating claimed counts would cost ~64 x the input before failing.
        var input = new byte[1 << 20];
        for (var level = 0; level < 64; level++)
        {
            var remaining = (uint)(input.Length - (8 * (level + 1)));
            var type = level % 2 == 0 ? 28u : 27u;
            U32(type, type == 28 ? remaining / 4 : remaining / 8).CopyTo(input, 8 * level);
        }

        input.AsSpan(8 * 64).Fill(0xEE); // 0xEE: not a type
        Assert.Equal(VariantErrorCode.UnknownType, Fails(input).Code);
        Assert.InRange(Allocated(() => VariantCodec.TryDecode(input, out _, out _)), 0, 64 * 1024);
    }

    public static TheoryData<string, Func<int, byte[]>> MaximalInputs() => new()
    {
        { "nils in an Array", n => U32([28, (uint)n, .. Enumerable.Repeat(0u, n)]) },
        { "distinct ints in a Dictionary", n => U32([27, (uint)n, .. Enumerable.Range(0, n).SelectMany(i => new[] { 2u, (uint)i, 0u })]) },
        { "nested empty Arrays", n => U32([.. Enumerable.Range(0, 60).SelectMany(_ => new[] { 28u, 1u }), 28, (uint)n, .. Enumerable.Range(0, n).SelectMany(_ => new[] { 28u, 0u })]) },
        { "Arrays of one nil", n => U32([28, (uint)n, .. Enumerable.Range(0, n).SelectMany(_ => new[] { 28u, 1u, 0u })]) },
        { "Dictionaries of one nil", n => U32([28, (uint)n, .. Enumerable.Range(0, n).SelectMany(_ => new[] { 27u, 1u, 0u, 0u })]) },
        { "one-letter Strings", n => U32([28, (uint)n, .. Enumerable.Range(0, n).SelectMany(_ => new[] { 4u, 1u, 0x61u })]) },
        { "empty PackedStringArray items", n => U32([34, (uint)n, .. Enumerable.Range(0, n).SelectMany(_ => new[] { 1u, 0u })]) },
        { "one-name NodePaths", n => U32([28, (uint)n, .. Enumerable.Range(0, n).SelectMany(_ => new[] { 22u, 0x8000_0001u, 0u, 0u, 1u, 0x61u })]) },
    };

    [Theory]
    [MemberData(nameof(MaximalInputs))]
    public void Decoded_memory_is_a_small_multiple_of_the_input(string what, Func<int, byte[]> make)
    {
        var input = make(20_000);
        Assert.True(VariantCodec.TryDecode(input, out _, out var error), $"{what}: {error}");
        var allocated = Allocated(() => VariantCodec.TryDecode(input, out _, out _));
        Assert.True(allocated < 16L * input.Length, $"{what}: {allocated} bytes allocated for {input.Length} bytes of input");
    }

    [Theory]
    [InlineData(64, true)]
    [InlineData(65, false)]
    public void Nesting_is_limited_to_MaxDepth(int levels, bool ok)
    {
        // `levels` arrays inside the top one: the innermost is at depth `levels`.
        var input = U32([.. Enumerable.Range(0, levels).SelectMany(_ => new[] { 28u, 1u }), 28, 0]);
        Assert.Equal(ok, VariantCodec.TryDecode(input, out _, out var error));
        if (!ok)
        {
            Assert.Equal(VariantErrorCode.TooDeep, error!.Code);
            Assert.Equal(8 * 65, error.Offset);
        }

        var dict = U32([.. Enumerable.Range(0, levels).SelectMany(_ => new[] { 27u, 1u, 0u }), 27, 0]);
        Assert.Equal(ok, VariantCodec.TryDecode(dict, out _, out _));
        var keys = U32([.. Enumerable.Range(0, levels).SelectMany(_ => new[] { 27u, 1u }), 27, 0, .. Enumerable.Repeat(0u, levels)]);
        Assert.Equal(ok, VariantCodec.TryDecode(keys, out _, out _));
    }

    [Fact]
    public void Very_deep_nesting_fails_fast_without_recursing_into_it()
    {
        var input = U32([.. Enumerable.Range(0, 200_000).SelectMany(_ => new[] { 28u, 1u }), 28, 0]);
        Assert.Equal(VariantErrorCode.TooDeep, Fails(input).Code);
        Assert.Equal(VariantErrorCode.TooDeep, Fails(input, new VariantDecodeOptions { MaxDepth = VariantDecodeOptions.DepthCeiling }).Code);
        Assert.Equal(VariantErrorCode.TooDeep, Fails(U32(28, 1, 0), new VariantDecodeOptions { MaxDepth = 0 }).Code);
        Assert.True(VariantCodec.TryDecode(U32(2, 7), out _, out _, new VariantDecodeOptions { MaxDepth = 0 }));
    }

    [Fact]
    public void Unknown_types_are_refused()
    {
        for (uint t = 39; t <= 255; t++)
        {
            var error = Fails(U32(t, 0, 0, 0));
            Assert.Equal(VariantErrorCode.UnknownType, error.Code);
            Assert.Equal(0, error.Offset);
        }

        Assert.Equal(VariantErrorCode.UnknownType, Fails(U32(28, 2, 2, 1, 0xC8)).Code);
    }

    [Theory]
    [InlineData(23u, "RID")]
    [InlineData(24u, "Object")]
    [InlineData(24u | (1 << 16), "Object")]
    [InlineData(25u, "Callable")]
    [InlineData(26u, "Signal")]
    public void Handles_local_to_one_engine_are_refused_anywhere(uint header, string what)
    {
        foreach (var input in new[]
        {
            U32(header, 0, 0, 0),
            U32(28, 1, header, 0, 0, 0),
            U32(27, 1, header, 0, 0, 0, 0),
            U32(27, 1, 0, header, 0, 0, 0),
        })
        {
            var error = Fails(input);
            Assert.Equal(VariantErrorCode.Unsupported, error.Code);
            Assert.Contains(what, error.Message, StringComparison.Ordinal);
        }

        var ex = Assert.Throws<VariantFormatException>(() => VariantCodec.Decode(U32(header, 0, 0)));
        Assert.Equal(VariantErrorCode.Unsupported, ex.Error.Code);
        Assert.IsAssignableFrom<FormatException>(ex);
    }

    [Fact]
    public void Header_bits_a_type_does_not_use_are_refused()
    {
        var valid = new Dictionary<VariantType, byte[]>();
        foreach (var v in ValidEncodings())
        {
            valid.TryAdd((VariantType)v[0], v);
        }

        foreach (var (type, bytes) in valid)
        {
            for (var bit = 8; bit < 32; bit++)
            {
                var copy = (byte[])bytes.Clone();
                BinaryPrimitives.WriteUInt32LittleEndian(copy, BinaryPrimitives.ReadUInt32LittleEndian(copy) ^ (1u << bit));
                var header = BinaryPrimitives.ReadUInt32LittleEndian(copy);
                if (VariantCodec.TryDecode(copy, out var value, out var error))
                {
                    // Allowed flags: 64-bit payloads, container type kinds; the value must then make sense of them.
                    Assert.True(bit is 16 or 17 or 18 or 19, $"{type} decoded with header 0x{header:x8}: {value}");
                }
                else if (bit is not (16 or 17 or 18 or 19))
                {
                    Assert.Equal(VariantErrorCode.InvalidHeader, error.Code);
                }
            }
        }
    }

    [Fact]
    public void Input_and_value_count_limits()
    {
        var nils = U32([28, 1000, .. Enumerable.Repeat(0u, 1000)]);
        Assert.True(VariantCodec.TryDecode(nils, out _, out _, new VariantDecodeOptions { MaxValues = 1001 }));
        Assert.Equal(VariantErrorCode.TooLarge, Fails(nils, new VariantDecodeOptions { MaxValues = 1000 }).Code);
        Assert.True(VariantCodec.TryDecode(nils, out _, out _, new VariantDecodeOptions { MaxBytes = nils.Length }));
        var tooLong = Fails(nils, new VariantDecodeOptions { MaxBytes = nils.Length - 1 });
        Assert.Equal(VariantErrorCode.TooLarge, tooLong.Code);
        Assert.Equal(0, tooLong.Offset);
        Assert.Equal(VariantErrorCode.TooLarge, Fails(new byte[VariantDecodeOptions.Default.MaxBytes + 4]).Code);
        Assert.Throws<ArgumentOutOfRangeException>(() => new VariantDecodeOptions { MaxDepth = -1 });
        Assert.Throws<ArgumentOutOfRangeException>(() => new VariantDecodeOptions { MaxDepth = VariantDecodeOptions.DepthCeiling + 1 });
        Assert.Throws<ArgumentOutOfRangeException>(() => new VariantDecodeOptions { MaxBytes = -1 });
        Assert.Throws<ArgumentOutOfRangeException>(() => new VariantDecodeOptions { MaxValues = 0 });
    }

    [Fact]
    public void Errors_say_what_and_where()
    {
        var error = Fails(U32(28, 2, 2, 1, 4, 1, 0xFF));
        Assert.Equal(VariantErrorCode.InvalidUtf8, error.Code);
        Assert.Equal(20, error.Offset); // where the string's length field is
        Assert.Equal("InvalidUtf8 at byte 20: String is not valid UTF-8", error.ToString());
        var ex = Assert.Throws<VariantFormatException>(() => VariantCodec.Decode(U32(28, 2, 2, 1, 4, 1, 0xFF)));
        Assert.Equal(error, ex.Error);
        Assert.Equal(error.ToString(), ex.Message);
    }
}
