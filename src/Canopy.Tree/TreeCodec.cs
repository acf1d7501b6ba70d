namespace Canopy.Tree;

using System.Buffers.Binary;

/// <summary>
/// Binary encodings of the tree's values (docs/tree.md). Each starts with a format version byte (1); a decoder
/// refuses other versions and ignores bytes after the fields it knows (so a version can grow by appending fields).
/// Strings are u16 big-endian length ‖ UTF-8; UUIDs 16 bytes big-endian.
/// </summary>
internal static class TreeCodec
{
    public const byte Version = 1;

    // node record: 1 ‖ uuid ‖ parent ‖ str name ‖ kind(1) ‖ str type ‖ str owner ("" = none) ‖ placement
    public static byte[] EncodeRecord(NodeRecord r)
    {
        var w = new Writer();
        w.Byte(Version);
        w.Uuid(r.Id);
        w.Uuid(r.Parent);
        w.Str(r.Name);
        w.Byte((byte)r.Kind);
        w.Str(r.Type);
        w.Str(r.Owner ?? string.Empty);
        w.Placement(r.Placement);
        return w.ToArray();
    }

    public static NodeRecord DecodeRecord(byte[] value)
    {
        var r = new Reader(value, "node record");
        r.Version();
        var id = r.Uuid();
        var parent = r.Uuid();
        var name = r.Str();
        var kind = r.Byte() switch
        {
            0 => NodeKind.Class,
            1 => NodeKind.Scene,
            var k => throw new TreeFormatException($"node record: unknown kind {k}"),
        };
        var type = r.Str();
        var owner = r.Str();
        var placement = r.Placement();
        return new NodeRecord(id, parent, name, kind, type, owner.Length == 0 ? null : owner, placement);
    }

    // child entry and locator: 1 ‖ uuid ‖ placement
    public static byte[] EncodeChild(Guid child, Placement placement)
    {
        var w = new Writer();
        w.Byte(Version);
        w.Uuid(child);
        w.Placement(placement);
        return w.ToArray();
    }

    public static (Guid Id, Placement Placement) DecodeChild(byte[] value)
    {
        var r = new Reader(value, "children index entry");
        r.Version();
        return (r.Uuid(), r.Placement());
    }

    public static byte[] EncodeLocator(Placement placement)
    {
        var w = new Writer();
        w.Byte(Version);
        w.Placement(placement);
        return w.ToArray();
    }

    public static Placement DecodeLocator(byte[] value)
    {
        var r = new Reader(value, "locator");
        r.Version();
        return r.Placement();
    }

    // session: 1 ‖ expiry (i64 Unix ns) ‖ lease (i64 ns)
    public static byte[] EncodeSession(long expiresAtNanos, TimeSpan lease)
    {
        var w = new Writer();
        w.Byte(Version);
        w.Int64(expiresAtNanos);
        w.Int64(lease.Ticks * 100);
        return w.ToArray();
    }

    public static SessionInfo DecodeSession(string id, byte[] value)
    {
        var r = new Reader(value, "session");
        r.Version();
        var expiry = r.Int64();
        var lease = r.Int64();
        return new SessionInfo(id, expiry, TimeSpan.FromTicks(lease / 100));
    }

    private sealed class Writer
    {
        private readonly List<byte> _b = new(64);

        public void Byte(byte b) => _b.Add(b);

        public void Uuid(Guid g) => _b.AddRange(TreeKeys.UuidBytes(g));

        public void Int64(long v)
        {
            Span<byte> s = stackalloc byte[8];
            BinaryPrimitives.WriteInt64BigEndian(s, v);
            foreach (var b in s)
            {
                _b.Add(b);
            }
        }

        public void Str(string s)
        {
            var bytes = TreeKeys.Utf8(s);
            if (bytes.Length > ushort.MaxValue)
            {
                throw new ArgumentException("a string of the tree is over 65535 bytes");
            }

            _b.Add((byte)(bytes.Length >> 8));
            _b.Add((byte)bytes.Length);
            _b.AddRange(bytes);
        }

        // placement: 0 (hash) | 1 ‖ str region
        public void Placement(Placement p)
        {
            if (p.Region is { } region)
            {
                Byte(1);
                Str(region);
            }
            else
            {
                Byte(0);
            }
        }

        public byte[] ToArray() => [.. _b];
    }

    private ref struct Reader(ReadOnlySpan<byte> data, string what)
    {
        private readonly ReadOnlySpan<byte> _data = data;
        private int _pos;

        public void Version()
        {
            var v = Byte();
            if (v != TreeCodec.Version)
            {
                throw new TreeFormatException($"{what}: format version {v} is not known (this library reads version {TreeCodec.Version})");
            }
        }

        public byte Byte() => Take(1)[0];

        public Guid Uuid() => TreeKeys.ReadUuid(Take(16));

        public long Int64() => BinaryPrimitives.ReadInt64BigEndian(Take(8));

        public string Str()
        {
            var len = BinaryPrimitives.ReadUInt16BigEndian(Take(2));
            return TreeKeys.FromUtf8(Take(len));
        }

        public Placement Placement() => Byte() switch
        {
            0 => Tree.Placement.Hashed,
            1 => Tree.Placement.InRegion(Str()),
            var k => throw new TreeFormatException($"{what}: unknown placement kind {k}"),
        };

        private ReadOnlySpan<byte> Take(int n)
        {
            if (_pos + n > _data.Length)
            {
                throw new TreeFormatException($"{what}: truncated ({_data.Length} bytes)");
            }

            var s = _data.Slice(_pos, n);
            _pos += n;
            return s;
        }
    }
}
