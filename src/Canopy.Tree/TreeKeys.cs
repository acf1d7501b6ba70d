namespace Canopy.Tree;

using System.Text;

/// <summary>
/// The key layout of one tree (docs/tree.md, layout 1). Every key is
/// <c>shard ‖ 0x01 ‖ len(tree) ‖ tree ‖ kind ‖ …</c>:
/// <list type="bullet">
/// <item><c>S ‖ ns ‖ 'H' ‖ uuid(16) ‖ suffix</c>: the home of a hash-placed node, S = shard of the UUID.</item>
/// <item><c>S ‖ ns ‖ 'R' ‖ len ‖ region ‖ uuid(16) ‖ suffix</c>: the home of a node in a region, S = shard of the region.</item>
/// <item><c>S ‖ ns ‖ 'L' ‖ uuid(16)</c>: the node's locator (its placement), S = shard of the UUID.</item>
/// <item><c>S ‖ ns ‖ 'S' ‖ session id</c>: a session's lease, S = shard of the session id.</item>
/// </list>
/// Home suffixes: <c>'n'</c> the node record, <c>'c' ‖ child name</c> a children-index entry, <c>'p' ‖ property name</c>
/// a property. UUIDs are 16 bytes, big-endian (RFC 4122 byte order); names are UTF-8.
/// </summary>
public sealed class TreeKeys
{
    /// <summary>
    /// One first byte per range of the cluster's static user ranges (split at e, i, n, r, v): a shard index 0–5 picks
    /// the byte, so hashed keys spread over all six. A split/merge layer will refine this mapping (docs/tree.md).
    /// </summary>
    public static ReadOnlySpan<byte> ShardBytes => "afjosw"u8;

    public const int ShardCount = 6;

    /// <summary>The byte after the shard byte that marks tree keys (text keys of other users never have it there).</summary>
    public const byte Marker = 0x01;

    public const int MaxTreeNameBytes = 64;
    public const int MaxRegionBytes = 200;
    public const int MaxNameBytes = 255;
    public const int MaxTypeBytes = 1024;
    public const int MaxPropertyNameBytes = 1024;
    public const int MaxSessionIdBytes = 200;

    internal const byte KindHashHome = (byte)'H';
    internal const byte KindRegionHome = (byte)'R';
    internal const byte KindLocator = (byte)'L';
    internal const byte KindSession = (byte)'S';
    internal const byte SuffixChild = (byte)'c';
    internal const byte SuffixRecord = (byte)'n';
    internal const byte SuffixProperty = (byte)'p';

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly byte[] _ns; // 0x01 ‖ len ‖ tree name

    public TreeKeys(string treeName)
    {
        ArgumentNullException.ThrowIfNull(treeName);
        var name = Utf8(treeName);
        if (name.Length is 0 or > MaxTreeNameBytes)
        {
            throw new ArgumentException($"a tree name must be 1 to {MaxTreeNameBytes} bytes of UTF-8", nameof(treeName));
        }

        TreeName = treeName;
        _ns = [Marker, (byte)name.Length, .. name];
    }

    public string TreeName { get; }

    // ---------------------------------------------------------------- hashing and shards

    /// <summary>
    /// The layout's hash: 64-bit FNV-1a, then the MurmurHash3 finaliser. Part of the persistent layout: never change
    /// it without a new layout version.
    /// </summary>
    public static ulong Hash(ReadOnlySpan<byte> bytes)
    {
        var h = 14695981039346656037UL;
        foreach (var b in bytes)
        {
            h ^= b;
            h *= 1099511628211UL;
        }

        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdUL;
        h ^= h >> 33;
        h *= 0xc4ceb9fe1a85ec53UL;
        h ^= h >> 33;
        return h;
    }

    public static int ShardOf(Guid id) => (int)(Hash(UuidBytes(id)) % ShardCount);

    public static int ShardOfRegion(string region) => (int)(Hash(Utf8(region)) % ShardCount);

    public static int ShardOfSession(string session) => (int)(Hash(Utf8(session)) % ShardCount);

    /// <summary>The shard of a node's home under <paramref name="placement"/>.</summary>
    public static int ShardOf(Guid id, Placement placement) => placement.Region is { } r ? ShardOfRegion(r) : ShardOf(id);

    // ---------------------------------------------------------------- parsing (change feeds)

    /// <summary>What a key of a node's home is (other tree keys, locators and sessions, parse as null).</summary>
    public readonly record struct HomeKey(Guid Node, Placement Placement, byte Suffix, string Name)
    {
        public bool IsRecord => Suffix == SuffixRecord;

        public bool IsProperty => Suffix == SuffixProperty;
    }

    /// <summary>Parses a key of one of this tree's node homes (record, property, child entry); null for anything else.</summary>
    public HomeKey? ParseHome(ReadOnlySpan<byte> key)
    {
        if (key.Length < 1 + _ns.Length + 1 + 16 + 1 || !key.Slice(1, _ns.Length).SequenceEqual(_ns))
        {
            return null;
        }

        var rest = key[(1 + _ns.Length)..];
        var kind = rest[0];
        rest = rest[1..];
        var placement = Placement.Hashed;
        if (kind == KindRegionHome)
        {
            var len = rest[0];
            if (rest.Length < 1 + len + 16 + 1)
            {
                return null;
            }

            try
            {
                placement = Placement.InRegion(FromUtf8(rest.Slice(1, len)));
            }
            catch (Exception ex) when (ex is ArgumentException or TreeFormatException)
            {
                return null;
            }

            rest = rest[(1 + len)..];
        }
        else if (kind != KindHashHome)
        {
            return null;
        }

        if (rest.Length < 17)
        {
            return null;
        }

        var id = ReadUuid(rest);
        var suffix = rest[16];
        if (suffix is not (SuffixRecord or SuffixProperty or SuffixChild))
        {
            return null;
        }

        string name;
        try
        {
            name = rest.Length > 17 ? FromUtf8(rest[17..]) : string.Empty;
        }
        catch (Exception ex) when (ex is ArgumentException or TreeFormatException)
        {
            return null;
        }

        return new HomeKey(id, placement, suffix, name);
    }

    // ---------------------------------------------------------------- keys

    /// <summary>The prefix of every key of a node's home: record, children index, properties.</summary>
    public byte[] Home(Guid id, Placement placement)
    {
        var uuid = UuidBytes(id);
        if (placement.Region is { } region)
        {
            var r = Utf8(region);
            return [ShardBytes[ShardOfRegion(region)], .. _ns, KindRegionHome, (byte)r.Length, .. r, .. uuid];
        }

        return [ShardBytes[ShardOf(id)], .. _ns, KindHashHome, .. uuid];
    }

    public byte[] Record(Guid id, Placement placement) => [.. Home(id, placement), SuffixRecord];

    public byte[] Child(Guid parent, Placement parentPlacement, string name) => [.. Home(parent, parentPlacement), SuffixChild, .. Utf8(name)];

    /// <summary>The children index of a node: [start, end).</summary>
    public (byte[] Start, byte[] End) Children(Guid parent, Placement parentPlacement)
    {
        var home = Home(parent, parentPlacement);
        return ([.. home, SuffixChild], [.. home, SuffixChild + 1]);
    }

    public byte[] Property(Guid id, Placement placement, string name) => [.. Home(id, placement), SuffixProperty, .. Utf8(name)];

    public (byte[] Start, byte[] End) Properties(Guid id, Placement placement)
    {
        var home = Home(id, placement);
        return ([.. home, SuffixProperty], [.. home, SuffixProperty + 1]);
    }

    /// <summary>Every key of a node's home: [start, end).</summary>
    public (byte[] Start, byte[] End) HomeSpan(Guid id, Placement placement)
    {
        var home = Home(id, placement);
        return (home, PrefixEnd(home));
    }

    public byte[] Locator(Guid id) => [ShardBytes[ShardOf(id)], .. _ns, KindLocator, .. UuidBytes(id)];

    public byte[] Session(string session)
    {
        ValidateSessionId(session);
        return [ShardBytes[ShardOfSession(session)], .. _ns, KindSession, .. Utf8(session)];
    }

    /// <summary>Every key of region <paramref name="region"/> (all nodes placed there): one contiguous span of one shard.</summary>
    public (byte[] Start, byte[] End) Region(string region)
    {
        ValidateRegion(region);
        var r = Utf8(region);
        byte[] prefix = [ShardBytes[ShardOfRegion(region)], .. _ns, KindRegionHome, (byte)r.Length, .. r];
        return (prefix, PrefixEnd(prefix));
    }

    /// <summary>The six spans (one per shard) that hold every key of this tree.</summary>
    public IReadOnlyList<(byte[] Start, byte[] End)> All()
    {
        var spans = new List<(byte[], byte[])>(ShardCount);
        foreach (var s in ShardBytes)
        {
            byte[] prefix = [s, .. _ns];
            spans.Add((prefix, PrefixEnd(prefix)));
        }

        return spans;
    }

    // ---------------------------------------------------------------- encodings and rules

    public static byte[] UuidBytes(Guid id) => id.ToByteArray(bigEndian: true);

    public static Guid ReadUuid(ReadOnlySpan<byte> bytes) => new(bytes[..16], bigEndian: true);

    /// <summary>The first key after every key that starts with <paramref name="prefix"/>.</summary>
    public static byte[] PrefixEnd(ReadOnlySpan<byte> prefix)
    {
        var end = prefix.ToArray();
        for (var i = end.Length - 1; i >= 0; i--)
        {
            if (end[i] != 0xFF)
            {
                end[i]++;
                return end[..(i + 1)];
            }
        }

        throw new ArgumentException("a prefix of only 0xFF bytes has no end", nameof(prefix));
    }

    internal static byte[] Utf8(string s)
    {
        try
        {
            return StrictUtf8.GetBytes(s);
        }
        catch (EncoderFallbackException e)
        {
            throw new ArgumentException($"not valid UTF-16 text: {e.Message}", nameof(s));
        }
    }

    internal static string FromUtf8(ReadOnlySpan<byte> bytes)
    {
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw new TreeFormatException("a stored name is not valid UTF-8");
        }
    }

    /// <summary>
    /// Node names: 1 to 255 bytes of UTF-8, without the characters Godot refuses in names (<c>. : / " %</c>) or
    /// control characters.
    /// </summary>
    public static void ValidateName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var n = Utf8(name).Length;
        if (n is 0 or > MaxNameBytes)
        {
            throw new ArgumentException($"a node name must be 1 to {MaxNameBytes} bytes of UTF-8: '{name}'", nameof(name));
        }

        foreach (var c in name)
        {
            if (c is '.' or ':' or '/' or '"' or '%' || char.IsControl(c))
            {
                throw new ArgumentException($"a node name must not contain . : / \" % or control characters: '{name}'", nameof(name));
            }
        }
    }

    public static void ValidateType(string type)
    {
        ArgumentNullException.ThrowIfNull(type);
        var n = Utf8(type).Length;
        if (n is 0 or > MaxTypeBytes)
        {
            throw new ArgumentException($"a class name or scene path must be 1 to {MaxTypeBytes} bytes of UTF-8", nameof(type));
        }
    }

    public static void ValidatePropertyName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var n = Utf8(name).Length;
        if (n is 0 or > MaxPropertyNameBytes)
        {
            throw new ArgumentException($"a property name must be 1 to {MaxPropertyNameBytes} bytes of UTF-8", nameof(name));
        }
    }

    public static void ValidateRegion(string region)
    {
        ArgumentNullException.ThrowIfNull(region);
        var n = Utf8(region).Length;
        if (n is 0 or > MaxRegionBytes)
        {
            throw new ArgumentException($"a region id must be 1 to {MaxRegionBytes} bytes of UTF-8", nameof(region));
        }
    }

    public static void ValidateSessionId(string session)
    {
        ArgumentNullException.ThrowIfNull(session);
        var n = Utf8(session).Length;
        if (n is 0 or > MaxSessionIdBytes)
        {
            throw new ArgumentException($"a session id must be 1 to {MaxSessionIdBytes} bytes of UTF-8", nameof(session));
        }
    }
}
