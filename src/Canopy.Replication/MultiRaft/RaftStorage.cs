using System.Buffers.Binary;
using Canopy.Replication.Raft;
using Canopy.Storage;

namespace Canopy.Replication.MultiRaft;

/// <summary>
/// On-disk layout of the Raft state of every group on a server, in the server's one storage engine.
/// Range-local keys (DESIGN §4), so a group's state is one contiguous span:
/// <code>
///   0x01 'g' group(8, big-endian) 'h'              hard state: term, vote, commit
///   0x01 'g' group 't'                             truncated state: index, term, membership at that index
///   0x01 'g' group 'l' index(8, big-endian)        log entry: term, type, data
///   0x01 'g' group 'm' ...                         the state machine's own range-local keys (applied state...)
///   0x01 'd' group(8)                              directory: the group has a replica here
///   0x01 'x' group(8)                              tombstone of a removed replica: index of its removal
/// </code>
/// Replaced entries: <see cref="AppendEntries"/> deletes persisted entries above the last one written,
/// so a truncated suffix never comes back after a restart.
/// </summary>
public static class RaftStorage
{
    private const byte LocalPrefix = 0x01;

    public static byte[] GroupPrefix(ulong group)
    {
        var k = new byte[10];
        k[0] = LocalPrefix;
        k[1] = (byte)'g';
        BinaryPrimitives.WriteUInt64BigEndian(k.AsSpan(2), group);
        return k;
    }

    /// <summary>First key after every key of <paramref name="group"/>.</summary>
    public static byte[] GroupEnd(ulong group)
    {
        var k = GroupPrefix(group);
        k[9]++;
        if (k[9] == 0)
        {
            // group id ends in 0xff: carry.
            return GroupPrefixNext(group);
        }

        return k;
    }

    private static byte[] GroupPrefixNext(ulong group)
    {
        var k = new byte[10];
        k[0] = LocalPrefix;
        k[1] = (byte)'g';
        BinaryPrimitives.WriteUInt64BigEndian(k.AsSpan(2), group + 1);
        return k;
    }

    public static byte[] GroupKey(ulong group, byte suffix, int extra = 0)
    {
        var k = new byte[11 + extra];
        k[0] = LocalPrefix;
        k[1] = (byte)'g';
        BinaryPrimitives.WriteUInt64BigEndian(k.AsSpan(2), group);
        k[10] = suffix;
        return k;
    }

    public static byte[] HardStateKey(ulong group) => GroupKey(group, (byte)'h');

    public static byte[] TruncatedKey(ulong group) => GroupKey(group, (byte)'t');

    public static byte[] LogKey(ulong group, ulong index)
    {
        var k = GroupKey(group, (byte)'l', 8);
        BinaryPrimitives.WriteUInt64BigEndian(k.AsSpan(11), index);
        return k;
    }

    public static byte[] TombstoneKey(ulong group) => ServerKey((byte)'x', group);

    public static byte[] EncodeTombstone(ulong removedAt)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, removedAt);
        return b;
    }

    public static byte[] DirectoryKey(ulong group) => ServerKey((byte)'d', group);

    private static byte[] ServerKey(byte kind, ulong group)
    {
        var k = new byte[10];
        k[0] = LocalPrefix;
        k[1] = kind;
        BinaryPrimitives.WriteUInt64BigEndian(k.AsSpan(2), group);
        return k;
    }

    public static byte[] EncodeHardState(HardState hs)
    {
        var b = new byte[24];
        BinaryPrimitives.WriteUInt64LittleEndian(b, hs.Term);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), hs.Vote);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), hs.Commit);
        return b;
    }

    public static HardState DecodeHardState(ReadOnlySpan<byte> b) =>
        b.Length != 24
            ? throw new FormatException("raft storage: bad hard state")
            : new HardState(
                BinaryPrimitives.ReadUInt64LittleEndian(b),
                BinaryPrimitives.ReadUInt64LittleEndian(b[8..]),
                BinaryPrimitives.ReadUInt64LittleEndian(b[16..]));

    public static byte[] EncodeMeta(SnapshotMeta meta)
    {
        var conf = meta.Conf.Encode();
        var b = new byte[16 + conf.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(b, meta.Index);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), meta.Term);
        conf.CopyTo(b.AsSpan(16));
        return b;
    }

    public static SnapshotMeta DecodeMeta(ReadOnlySpan<byte> b) =>
        b.Length < 16
            ? throw new FormatException("raft storage: bad truncated state")
            : new SnapshotMeta(BinaryPrimitives.ReadUInt64LittleEndian(b), BinaryPrimitives.ReadUInt64LittleEndian(b[8..]), ConfState.Decode(b[16..]));

    public static byte[] EncodeEntry(in Entry e)
    {
        var b = new byte[9 + e.Data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(b, e.Term);
        b[8] = (byte)e.Type;
        e.Data.Span.CopyTo(b.AsSpan(9));
        return b;
    }

    public static Entry DecodeEntry(ulong index, byte[] b) =>
        b.Length < 9
            ? throw new FormatException("raft storage: bad entry")
            : new Entry(index, BinaryPrimitives.ReadUInt64LittleEndian(b), (EntryType)b[8], b.AsMemory(9));

    /// <summary>Writes entries, deleting any persisted entries above the last one (a replaced suffix).</summary>
    public static void AppendEntries(WriteBatch batch, ulong group, Entry[] entries, ulong persistedLast)
    {
        foreach (var e in entries)
        {
            batch.Put(LogKey(group, e.Index), EncodeEntry(e));
        }

        var last = entries[^1].Index;
        if (persistedLast > last)
        {
            batch.DeleteRange(LogKey(group, last + 1), LogKey(group, persistedLast + 1));
        }
    }

    /// <summary>What a restarting server finds for one group.</summary>
    public sealed record Persisted(HardState HardState, SnapshotMeta Truncated, List<Entry> Entries);

    /// <summary>Reads one group's Raft state. Entries must be contiguous after the truncated index.</summary>
    public static Persisted Load(IStorageEngine engine, ulong group)
    {
        var hs = engine.Get(HardStateKey(group)) is { } h ? DecodeHardState(h) : HardState.Empty;
        var meta = engine.Get(TruncatedKey(group)) is { } t ? DecodeMeta(t) : SnapshotMeta.Empty;
        var entries = new List<Entry>();
        var expect = meta.Index + 1;
        foreach (var (k, v) in engine.Scan(LogKey(group, meta.Index + 1), LogKey(group, ulong.MaxValue)))
        {
            var index = BinaryPrimitives.ReadUInt64BigEndian(k.AsSpan(11));
            if (index != expect)
            {
                throw new FormatException($"raft storage: group {group} log has a gap at {expect} (found {index})");
            }

            entries.Add(DecodeEntry(index, v));
            expect++;
        }

        return new Persisted(hs, meta, entries);
    }

    /// <summary>Every group with a replica on this server, and every tombstone.</summary>
    public static (List<ulong> Groups, Dictionary<ulong, ulong> Tombstones) ListGroups(IStorageEngine engine)
    {
        var groups = new List<ulong>();
        foreach (var (k, _) in engine.Scan([LocalPrefix, (byte)'d'], [LocalPrefix, (byte)'d' + 1]))
        {
            groups.Add(BinaryPrimitives.ReadUInt64BigEndian(k.AsSpan(2)));
        }

        var tombstones = new Dictionary<ulong, ulong>();
        foreach (var (k, v) in engine.Scan([LocalPrefix, (byte)'x'], [LocalPrefix, (byte)'x' + 1]))
        {
            tombstones[BinaryPrimitives.ReadUInt64BigEndian(k.AsSpan(2))] = BinaryPrimitives.ReadUInt64LittleEndian(v);
        }

        return (groups, tombstones);
    }
}
