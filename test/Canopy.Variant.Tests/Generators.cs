using CsCheck;

namespace Canopy.Variant.Tests;

/// <summary>
/// Runs a property over a fixed list of CsCheck seeds (one case per seed), so every run of the suite checks the same
/// cases and a failure names a seed that replays it. Same scheme as the clock and storage tests.
/// </summary>
internal static class Seeds
{
    public static void ForSeeds<T>(Gen<T> gen, int count, ulong salt, Action<T> test, Func<T, string>? print = null)
    {
        for (var i = 0; i < count; i++)
        {
            var seed = new PCG(1, (salt << 32) + (ulong)i).ToString();
            gen.Sample(test, seed: seed, iter: 1, threads: 1, print: print);
        }
    }
}

/// <summary>CsCheck generators of every supported Variant, nested containers and typed ones included.</summary>
internal static class VariantGen
{
    private static readonly Gen<float> Real = Gen.Frequency(
        (6, Gen.Float),
        (1, Gen.OneOf(0f, -0f, 1.5f, 0.1f, float.NaN, BitConverter.Int32BitsToSingle(0x7FC00000), float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, float.Epsilon)));

    private static readonly Gen<double> Double = Gen.Frequency(
        (4, Gen.Double),
        (2, Gen.Float.Select(f => (double)f)),
        (1, Gen.Double.Special),
        (1, Gen.OneOf(0.1, 1.5, -0.0, BitConverter.Int64BitsToDouble(0x7FF8000000000000), BitConverter.Int64BitsToDouble(0x7FF0000000000001))));

    private static readonly Gen<long> Long = Gen.Frequency(
        (3, Gen.Long),
        (3, Gen.Int.Select(i => (long)i)),
        (1, Gen.OneOf(0L, -1L, int.MaxValue, int.MinValue, int.MaxValue + 1L, int.MinValue - 1L, long.MaxValue, long.MinValue)));

    // Valid UTF-16 without NUL: ASCII, Latin, CJK, an emoji (surrogate pair), control characters.
    private static readonly Gen<string> Piece = Gen.Frequency(
        (6, Gen.Char['a', 'z'].Select(c => c.ToString())),
        (2, Gen.Char[' ', '~'].Select(c => c.ToString())),
        (1, Gen.Char['\u0080', '\uD7FF'].Select(c => c.ToString())),
        (1, Gen.OneOf("é", "日本", "🎮", "\n", "\t", "\u0001", "\uFEFF", "\uFFFF")));

    // A leading U+FEFF cannot be sent (the engine's decoder drops it as a BOM); inside a string it is fine.
    public static readonly Gen<string> Text = Piece.Array[0, 9].Select(string.Concat).Select(s => s.StartsWith('\uFEFF') ? "x" + s : s);

    private static readonly Gen<string> PathPart = Gen.Frequency(
        (5, Gen.Char['a', 'z'].Array[1, 6].Select(cs => new string(cs))),
        (1, Gen.OneOf("..", ".", "Ünïcode", "ノード", "%Unique")));

    public static readonly Gen<NodePath> Path = Gen.Select(
        PathPart.Array[0, 4], PathPart.Array[0, 3], Gen.Bool,
        (names, subs, absolute) => new NodePath(names, subs, absolute));

    private static readonly Gen<Vector2> V2 = Gen.Select(Real, Real, (x, y) => new Vector2(x, y));
    private static readonly Gen<Vector3> V3 = Gen.Select(Real, Real, Real, (x, y, z) => new Vector3(x, y, z));
    private static readonly Gen<Vector4> V4 = Gen.Select(Real, Real, Real, Real, (x, y, z, w) => new Vector4(x, y, z, w));
    private static readonly Gen<Color> Col = Gen.Select(Real, Real, Real, Real, (r, g, b, a) => new Color(r, g, b, a));
    private static readonly Gen<Basis> Bas = Gen.Select(V3, V3, V3, (a, b, c) => new Basis(a, b, c));

    /// <summary>Every non-container variant.</summary>
    public static readonly Gen<GodotVariant> Leaf = Gen.OneOf<GodotVariant>(
        Gen.Const<GodotVariant>(GodotVariant.Nil),
        Gen.Bool.Select(b => (GodotVariant)b),
        Long.Select(l => (GodotVariant)l),
        Double.Select(d => (GodotVariant)d),
        Text.Select(s => (GodotVariant)s),
        Text.Select(s => (GodotVariant)new VariantStringName(s)),
        Path.Select(p => (GodotVariant)p),
        V2.Select(v => (GodotVariant)v),
        Gen.Select(Gen.Int, Gen.Int, (x, y) => (GodotVariant)new Vector2I(x, y)),
        Gen.Select(V2, V2, (p, s) => (GodotVariant)new Rect2(p, s)),
        Gen.Select(Gen.Int, Gen.Int, Gen.Int, Gen.Int, (a, b, c, d) => (GodotVariant)new Rect2I(a, b, c, d)),
        V3.Select(v => (GodotVariant)v),
        Gen.Select(Gen.Int, Gen.Int, Gen.Int, (x, y, z) => (GodotVariant)new Vector3I(x, y, z)),
        Gen.Select(V2, V2, V2, (x, y, o) => (GodotVariant)new Transform2D(x, y, o)),
        V4.Select(v => (GodotVariant)v),
        Gen.Select(Gen.Int, Gen.Int, Gen.Int, Gen.Int, (x, y, z, w) => (GodotVariant)new Vector4I(x, y, z, w)),
        Gen.Select(V3, Real, (n, d) => (GodotVariant)new Plane(n, d)),
        V4.Select(v => (GodotVariant)new Quaternion(v.X, v.Y, v.Z, v.W)),
        Gen.Select(V3, V3, (p, s) => (GodotVariant)new Aabb(p, s)),
        Bas.Select(b => (GodotVariant)b),
        Gen.Select(Bas, V3, (b, o) => (GodotVariant)new Transform3D(b, o)),
        Gen.Select(V4, V4, V4, V4, (x, y, z, w) => (GodotVariant)new Projection(x, y, z, w)),
        Col.Select(c => (GodotVariant)c),
        Gen.Byte.Array[0, 9].Select(a => (GodotVariant)new PackedByteArray(a)),
        Gen.Int.Array[0, 5].Select(a => (GodotVariant)new PackedInt32Array(a)),
        Long.Array[0, 5].Select(a => (GodotVariant)new PackedInt64Array(a)),
        Real.Array[0, 5].Select(a => (GodotVariant)new PackedFloat32Array(a)),
        Double.Array[0, 5].Select(a => (GodotVariant)new PackedFloat64Array(a)),
        Text.Array[0, 5].Select(a => (GodotVariant)new PackedStringArray(a)),
        V2.Array[0, 4].Select(a => (GodotVariant)new PackedVector2Array(a)),
        V3.Array[0, 4].Select(a => (GodotVariant)new PackedVector3Array(a)),
        Col.Array[0, 4].Select(a => (GodotVariant)new PackedColorArray(a)),
        V4.Array[0, 4].Select(a => (GodotVariant)new PackedVector4Array(a)));

    // Typed containers: pick an element type, then elements of that type.
    private static readonly Gen<GodotVariant> TypedArray = Gen.OneOf<GodotVariant>(
        Long.Array[0, 4].Select(a => (GodotVariant)new VariantArray(a.Select(x => (GodotVariant)x), new ContainerType(VariantType.Int))),
        Text.Array[0, 4].Select(a => (GodotVariant)new VariantArray(a.Select(x => (GodotVariant)x), new ContainerType(VariantType.String))),
        Text.Array[0, 4].Select(a => (GodotVariant)new VariantArray(a.Select(x => (GodotVariant)new VariantStringName(x)), new ContainerType(VariantType.StringName))),
        V3.Array[0, 4].Select(a => (GodotVariant)new VariantArray(a.Select(x => (GodotVariant)x), new ContainerType(VariantType.Vector3))),
        Gen.Int[0, 3].Select(n => (GodotVariant)new VariantArray(Enumerable.Repeat<GodotVariant>(GodotVariant.Nil, n), new ContainerType(VariantType.Object, "EncodedObjectAsID"))),
        Gen.Select(Text.Array[0, 4], Double.Array[0, 4], (k, v) => (GodotVariant)new VariantDictionary(
            k.Zip(v, (a, b) => KeyValuePair.Create<GodotVariant, GodotVariant>(a, b)),
            new ContainerType(VariantType.String),
            new ContainerType(VariantType.Float))));

    /// <summary>Any supported variant: leaves, and arrays / dictionaries nested up to 4 levels.</summary>
    public static readonly Gen<GodotVariant> Any = Gen.Recursive<GodotVariant>((depth, any) =>
        depth >= 4
            ? Leaf
            : Gen.Frequency(
                (8, Leaf),
                (2, any.Array[0, 5].Select(items => (GodotVariant)new VariantArray(items))),
                (2, Gen.Select(any, any).Array[0, 4].Select(kvs => (GodotVariant)new VariantDictionary(kvs.Select(kv => KeyValuePair.Create(kv.Item1, kv.Item2))))),
                (1, TypedArray)));
}
