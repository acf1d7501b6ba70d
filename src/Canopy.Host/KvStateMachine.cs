namespace Canopy.Host;

using System.Buffers.Binary;
using Canopy.Replication.MultiRaft;
using Canopy.Replication.Raft;
using Canopy.Storage;

/// <summary>
/// A plain replicated key-value map per Raft group, used by the raft-level server (`canopy raft-node`), its
/// real-process tests and the Raft benchmarks. (The range layer with MVCC replaces it for the real cluster.)
///
/// Keys of group g live under its range-local prefix: <c>GroupKey(g, 'u') + key</c>; the applied index under
/// <c>GroupKey(g, 'm')</c>, written in the same batch as the change it records, so applying is atomic and a
/// restart resumes from the last applied entry. Commands: <see cref="EncodePut"/> / <see cref="EncodeDelete"/>;
/// anything else (a leader's no-op, a configuration change, an unknown command) only advances the applied index.
/// A snapshot is the whole map plus the applied index.
/// </summary>
public sealed class KvStateMachine : IReplicaStateMachine
{
    private const byte OpPut = 1;
    private const byte OpDelete = 2;

    private readonly IStorageEngine _engine;
    private readonly byte[] _appliedKey;
    private readonly byte[] _dataStart;
    private readonly byte[] _dataEnd;

    public KvStateMachine(ulong group, IStorageEngine engine)
    {
        _engine = engine;
        _appliedKey = RaftStorage.GroupKey(group, (byte)'m');
        _dataStart = RaftStorage.GroupKey(group, (byte)'u');
        _dataEnd = RaftStorage.GroupKey(group, (byte)('u' + 1));
        Applied = engine.Get(_appliedKey) is { Length: 8 } v ? BinaryPrimitives.ReadUInt64LittleEndian(v) : 0;
    }

    public ulong Applied { get; private set; }

    public static byte[] EncodePut(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        var b = new byte[3 + key.Length + value.Length];
        b[0] = OpPut;
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(1), checked((ushort)key.Length));
        key.CopyTo(b.AsSpan(3));
        value.CopyTo(b.AsSpan(3 + key.Length));
        return b;
    }

    public static byte[] EncodeDelete(ReadOnlySpan<byte> key)
    {
        var b = new byte[3 + key.Length];
        b[0] = OpDelete;
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(1), checked((ushort)key.Length));
        key.CopyTo(b.AsSpan(3));
        return b;
    }

    /// <summary>The applied value of <paramref name="key"/> on this replica (not linearizable: a local read).</summary>
    public byte[]? Get(ReadOnlySpan<byte> key) => _engine.Get(DataKey(key));

    public void Apply(in Entry entry, WriteBatch batch)
    {
        var d = entry.Data.Span;
        if (entry.Type == EntryType.Normal && d.Length >= 3 && (d[0] == OpPut || d[0] == OpDelete))
        {
            var klen = BinaryPrimitives.ReadUInt16LittleEndian(d[1..]);
            if (3 + klen <= d.Length)
            {
                var key = DataKey(d.Slice(3, klen));
                if (d[0] == OpPut)
                {
                    batch.Put(key, d[(3 + klen)..].ToArray());
                }
                else
                {
                    batch.Delete(key);
                }
            }
        }

        Applied = entry.Index;
        batch.Put(_appliedKey, AppliedBytes());
    }

    public void Install(Snapshot snapshot, WriteBatch batch)
    {
        batch.DeleteRange(_dataStart, _dataEnd);
        var d = snapshot.Data.Span;
        var off = 0;
        while (off + 8 <= d.Length)
        {
            var klen = BinaryPrimitives.ReadInt32LittleEndian(d[off..]);
            var vlen = BinaryPrimitives.ReadInt32LittleEndian(d[(off + 4)..]);
            off += 8;
            if (klen < 0 || vlen < 0 || off + klen + vlen > d.Length)
            {
                throw new FormatException("kv snapshot: truncated");
            }

            batch.Put(DataKey(d.Slice(off, klen)), d.Slice(off + klen, vlen).ToArray());
            off += klen + vlen;
        }

        Applied = snapshot.Meta.Index;
        batch.Put(_appliedKey, AppliedBytes());
    }

    public (ulong Index, ReadOnlyMemory<byte> Data) Capture()
    {
        using var ms = new MemoryStream();
        Span<byte> head = stackalloc byte[8];
        foreach (var (k, v) in _engine.Scan(_dataStart, _dataEnd))
        {
            var key = k.AsSpan(_dataStart.Length);
            BinaryPrimitives.WriteInt32LittleEndian(head, key.Length);
            BinaryPrimitives.WriteInt32LittleEndian(head[4..], v.Length);
            ms.Write(head);
            ms.Write(key);
            ms.Write(v);
        }

        return (Applied, ms.ToArray());
    }

    private byte[] DataKey(ReadOnlySpan<byte> key)
    {
        var k = new byte[_dataStart.Length + key.Length];
        _dataStart.CopyTo(k, 0);
        key.CopyTo(k.AsSpan(_dataStart.Length));
        return k;
    }

    private byte[] AppliedBytes()
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, Applied);
        return b;
    }
}

/// <summary>Opens a <see cref="KvStateMachine"/> per group and keeps them for reads.</summary>
public sealed class KvStateMachineFactory : IStateMachineFactory
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<ulong, KvStateMachine> _machines = new();

    public KvStateMachine? Get(ulong group) => _machines.TryGetValue(group, out var m) ? m : null;

    public IReplicaStateMachine Open(ulong group, IStorageEngine engine) => _machines[group] = new KvStateMachine(group, engine);

    public void Destroyed(ulong group) => _machines.TryRemove(group, out _);
}
