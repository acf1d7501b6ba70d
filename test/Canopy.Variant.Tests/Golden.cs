namespace Canopy.Variant.Tests;

/// <summary>One <c>encode</c> line of the golden file: what the engine's var_to_bytes wrote for a GDScript expression.</summary>
internal sealed record EncodeVector(string Name, string Expression, byte[] Bytes);

/// <summary>One <c>decode</c> line: what the engine's bytes_to_var made of the input, re-encoded, and whether it logged errors.</summary>
internal sealed record DecodeVector(string Name, byte[] Input, int EngineType, byte[] EngineReencoded, string EngineErrors)
{
    /// <summary>bytes_to_var failed (it returns null and logs an error), as opposed to returning a value (possibly after logging).</summary>
    public bool EngineFailed => EngineType == 0 && EngineErrors != "-";
}

/// <summary>Reads test/Canopy.Variant.Tests/golden/godot-4.6-variants.txt (produced by tools/godot-goldens from the real engine).</summary>
internal static class Golden
{
    private static readonly Lazy<(IReadOnlyList<EncodeVector> Encode, IReadOnlyList<DecodeVector> Decode)> File = new(Load);

    public static IReadOnlyList<EncodeVector> Encode => File.Value.Encode;

    public static IReadOnlyList<DecodeVector> Decode => File.Value.Decode;

    public static string Path => System.IO.Path.Combine(AppContext.BaseDirectory, "golden", "godot-4.6-variants.txt");

    public static EncodeVector EncodeNamed(string name) => Encode.Single(v => v.Name == name);

    public static DecodeVector DecodeNamed(string name) => Decode.Single(v => v.Name == name);

    public static IEnumerable<object[]> EncodeNames() => Encode.Select(v => new object[] { v.Name });

    public static IEnumerable<object[]> DecodeNames() => Decode.Select(v => new object[] { v.Name });

    private static (IReadOnlyList<EncodeVector>, IReadOnlyList<DecodeVector>) Load()
    {
        var encode = new List<EncodeVector>();
        var decode = new List<DecodeVector>();
        foreach (var line in System.IO.File.ReadAllLines(Path))
        {
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }

            var f = line.Split('\t');
            switch (f[0])
            {
                case "encode" when f.Length == 4:
                    encode.Add(new EncodeVector(f[1], f[2], Convert.FromHexString(f[3])));
                    break;
                case "decode" when f.Length == 6:
                    decode.Add(new DecodeVector(f[1], Convert.FromHexString(f[2]), int.Parse(f[3], System.Globalization.CultureInfo.InvariantCulture), Convert.FromHexString(f[4]), f[5]));
                    break;
                default:
                    throw new InvalidDataException($"unreadable golden line: {line}");
            }
        }

        return (encode, decode);
    }
}

internal static class Bytes
{
    public static string Hex(ReadOnlySpan<byte> b) => Convert.ToHexString(b).ToLowerInvariant();

    /// <summary>
    /// Asserts <paramref name="actual"/> (our encoding of <paramref name="value"/>) equals <paramref name="expected"/> byte for byte,
    /// except in NodePath padding, which the engine does not zero. The padding positions come from our encoder.
    /// </summary>
    public static void EqualMaskingNodePathPadding(byte[] expected, GodotVariant value, string because)
    {
        var padding = new List<(int Offset, int Length)>();
        var actual = VariantCodec.Encode(value, padding);
        Assert.True(
            expected.Length == actual.Length,
            $"{because}: length {actual.Length}, engine wrote {expected.Length}\n ours:   {Hex(actual)}\n engine: {Hex(expected)}");
        var mask = new bool[actual.Length];
        foreach (var (offset, length) in padding)
        {
            for (var i = offset; i < offset + length; i++)
            {
                mask[i] = true;
                Assert.Equal(0, actual[i]); // ours are zeros
            }
        }

        for (var i = 0; i < actual.Length; i++)
        {
            Assert.True(
                mask[i] || actual[i] == expected[i],
                $"{because}: byte {i} is {actual[i]:x2}, engine wrote {expected[i]:x2}\n ours:   {Hex(actual)}\n engine: {Hex(expected)}");
        }
    }
}
