using System.Text;
using Canopy.Clock;
using Canopy.Mvcc;
using Canopy.Replication.Raft;
using Canopy.Storage;

namespace Canopy.Ranges.Tests;

/// <summary>Small builders shared by the tests.</summary>
internal static class Bytes
{
    public static byte[] S(string ascii) => Encoding.ASCII.GetBytes(ascii);

    public static HlcTimestamp T(long wall, int logical = 0) => new(wall, logical);

    public static string Hex(byte[]? bytes) => bytes is null ? "null" : Convert.ToHexString(bytes);
}

/// <summary>
/// One replica of a range on a <see cref="MemoryEngine"/>, driven the way the Raft scheduler drives it: each
/// committed entry is applied into a fresh batch that is then written (unsynced) to the engine; the result reported
/// through <see cref="RangeStateMachine.OnCommandApplied"/> is returned.
/// </summary>
internal sealed class Replica
{
    public Replica(ulong rangeId, MemoryEngine? engine = null)
    {
        RangeId = rangeId;
        Engine = engine ?? new MemoryEngine();
        Sm = new RangeStateMachine(rangeId, Engine);
    }

    public ulong RangeId { get; }

    public MemoryEngine Engine { get; }

    public RangeStateMachine Sm { get; private set; }

    /// <summary>A replica bootstrapped with <paramref name="descriptor"/> at <paramref name="index"/> (as a new cluster does).</summary>
    public static Replica Bootstrap(RangeDescriptor descriptor, ulong index = 10, MemoryEngine? engine = null)
    {
        var r = new Replica(descriptor.RangeId, engine);
        r.Install(new Snapshot(new SnapshotMeta(index, 1, new ConfState(descriptor.Replicas, [])), RangeStateMachine.InitialSnapshot(descriptor)));
        return r;
    }

    public void Install(Snapshot snapshot)
    {
        var batch = new WriteBatch();
        Sm.Install(snapshot, batch);
        Engine.Write(batch, sync: true);
    }

    public ApplyResult Apply(RangeCommand command) => ApplyRaw(command.Encode());

    /// <summary>Applies an entry with these bytes at the next index; returns what the state machine reported.</summary>
    public ApplyResult ApplyRaw(ReadOnlyMemory<byte> data, EntryType type = EntryType.Normal)
    {
        var index = Sm.Applied + 1;
        ApplyResult? reported = null;
        Sm.OnCommandApplied = (i, r) =>
        {
            Assert.Equal(index, i);
            reported = r;
        };
        var batch = new WriteBatch();
        Sm.Apply(new Entry(index, 2, type, data), batch);
        Engine.Write(batch, sync: false);
        Sm.Written(); // as the scheduler does once the apply batch is written: the lease is published
        Sm.OnCommandApplied = null;
        Assert.Equal(index, Sm.Applied);
        return reported ?? throw new InvalidOperationException("OnCommandApplied was not called");
    }

    /// <summary>Opens the state machine again from the engine (a restart).</summary>
    public void Reopen() => Sm = new RangeStateMachine(RangeId, Engine);

    public ApplyResult Lease(Lease lease, ulong previousSequence, bool transfer = false) =>
        Apply(new RangeCommand.LeaseCommand(lease, previousSequence, transfer));

    public ApplyResult Put(ulong sequence, string key, string value, HlcTimestamp ts) =>
        Apply(new RangeCommand.WriteCommand(sequence, [new MvccWrite(Bytes.S(key), ts, Bytes.S(value))]));

    /// <summary>The value of <paramref name="key"/> at <paramref name="at"/> as text, or null.</summary>
    public string? Read(string key, HlcTimestamp at)
    {
        var r = Sm.Mvcc.Get(Bytes.S(key), at);
        Assert.Equal(MvccReadStatus.Ok, r.Status);
        return r.Value is { } v ? Encoding.ASCII.GetString(v.Bytes) : null;
    }

    /// <summary>Every engine key and value (hex), in order.</summary>
    public List<string> Dump(byte[]? lower = null, byte[]? upper = null) =>
        Engine.Scan(lower ?? [], upper ?? [0xFF, 0xFF, 0xFF]).Select(kv => $"{Bytes.Hex(kv.Key)}={Bytes.Hex(kv.Value)}").ToList();
}
