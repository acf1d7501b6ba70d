using CsCheck;
using static Canopy.Storage.Tests.Bytes;

namespace Canopy.Storage.Tests;

/// <summary>The crash model of <see cref="MemoryEngine"/>: what survives <see cref="MemoryEngine.Crash"/> and what does not.</summary>
public sealed class MemoryEngineCrashTests
{
    private static readonly byte[] Top = [0xFF, 0xFF, 0xFF, 0xFF];

    [Fact]
    public void Synced_writes_survive_a_crash()
    {
        using var engine = new MemoryEngine();
        engine.Write(new WriteBatch().Put(S("a"), S("1")), sync: true);
        engine.Write(new WriteBatch().Put(S("b"), S("2")).Delete(S("a")), sync: true);

        Assert.Equal(0, engine.Crash());

        Assert.Null(engine.Get(S("a")));
        Assert.Equal(S("2"), engine.Get(S("b")));
        Assert.Equal(2, engine.DurableWrites);
        Assert.Equal(0, engine.LostWrites);
    }

    [Fact]
    public void Unsynced_writes_are_visible_until_a_crash_loses_them()
    {
        using var engine = new MemoryEngine();
        engine.Write(new WriteBatch().Put(S("a"), S("1")), sync: false);
        engine.Write(new WriteBatch().Put(S("b"), S("2")), sync: false);
        Assert.Equal(S("1"), engine.Get(S("a")));
        Assert.Equal(2, engine.PendingBatches);

        Assert.Equal(2, engine.Crash());

        Assert.Null(engine.Get(S("a")));
        Assert.Null(engine.Get(S("b")));
        Assert.Equal(0, engine.PendingBatches);
        Assert.Equal(0, engine.DurableWrites);
        Assert.Equal(2, engine.LostWrites);
        Assert.Equal(0, engine.KeyCount);
    }

    [Fact]
    public void Sync_makes_every_earlier_write_durable()
    {
        using var engine = new MemoryEngine();
        engine.Write(new WriteBatch().Put(S("a"), S("1")), sync: false);
        engine.Write(new WriteBatch().Put(S("b"), S("2")), sync: false);
        engine.Sync();
        engine.Write(new WriteBatch().Put(S("c"), S("3")), sync: false);

        Assert.Equal(1, engine.Crash());

        Assert.Equal(S("1"), engine.Get(S("a")));
        Assert.Equal(S("2"), engine.Get(S("b")));
        Assert.Null(engine.Get(S("c")));
        Assert.Equal(1, engine.SyncOperations);
    }

    [Fact]
    public void A_synced_write_makes_earlier_unsynced_writes_durable()
    {
        using var engine = new MemoryEngine();
        engine.Write(new WriteBatch().Put(S("a"), S("1")), sync: false);
        engine.Write(new WriteBatch().Put(S("b"), S("2")), sync: true);

        engine.Crash();

        Assert.Equal(S("1"), engine.Get(S("a")));
        Assert.Equal(S("2"), engine.Get(S("b")));
        Assert.Equal(2, engine.DurableWrites);
    }

    [Fact]
    public void An_empty_synced_batch_is_a_sync()
    {
        using var engine = new MemoryEngine();
        engine.Write(new WriteBatch().Put(S("a"), S("1")), sync: false);
        engine.Write(new WriteBatch(), sync: true);

        engine.Crash();

        Assert.Equal(S("1"), engine.Get(S("a")));
    }

    [Fact]
    public void A_crash_restores_overwritten_and_deleted_values()
    {
        using var engine = new MemoryEngine();
        engine.Write(new WriteBatch().Put(S("a"), S("1")).Put(S("b"), S("2")).Put(S("c"), S("3")).Put(S("d"), S("4")), sync: true);
        var durable = engine.Scan([], Top).ToList();

        engine.Write(new WriteBatch().Put(S("a"), S("one")).Put(S("a"), S("uno")).Delete(S("b")), sync: false);
        engine.Write(new WriteBatch().DeleteRange(S("c"), S("z")).Put(S("c"), S("drei")).Put(S("e"), S("5")), sync: false);
        engine.Write(new WriteBatch().Put(S("b"), S("zwei")).DeleteRange([], Top), sync: false);
        Assert.Equal(0, engine.KeyCount);

        engine.Crash();

        AssertSameEntries(durable, engine.Scan([], Top), "after crash");
    }

    [Fact]
    public void A_batch_is_never_half_applied()
    {
        for (var seed = 0; seed < 200; seed++)
        {
            using var engine = new MemoryEngine();
            engine.Write(new WriteBatch().Put(S("a"), S("0")).Put(S("b"), S("0")).Put(S("k"), S("0")), sync: true);
            var before = Describe(engine.Scan([], Top));
            engine.Write(new WriteBatch().Put(S("a"), S("1")).Delete(S("b")).DeleteRange(S("c"), S("z")).Put(S("z"), S("1")), sync: false);
            var after = Describe(engine.Scan([], Top));

            engine.Crash(new Random(seed));

            var state = Describe(engine.Scan([], Top));
            Assert.True(state == before || state == after, $"seed {seed}: {state} is neither {before} nor {after}");
        }
    }

    [Fact]
    public void A_crash_with_a_random_keeps_a_prefix_of_the_unsynced_batches()
    {
        const int Batches = 10;
        var keptCounts = new SortedSet<int>();
        for (var seed = 0; seed < 300; seed++)
        {
            using var engine = new MemoryEngine();
            for (var i = 0; i < Batches; i++)
            {
                engine.Write(new WriteBatch().Put([(byte)i], [(byte)i]), sync: false);
            }

            var lost = engine.Crash(new Random(seed));

            var keys = engine.Scan([], Top).Select(e => (int)e.Key[0]).ToList();
            Assert.Equal(Enumerable.Range(0, Batches - lost), keys); // A prefix: 0..kept-1, nothing after a gap.
            Assert.Equal(Batches - lost, engine.DurableWrites);
            Assert.Equal(lost, engine.LostWrites);
            keptCounts.Add(keys.Count);
        }

        // Every prefix length, from none to all, occurs for some seed.
        Assert.Equal(Enumerable.Range(0, Batches + 1), keptCounts);
    }

    [Fact]
    public void A_crash_is_deterministic_for_a_seeded_random()
    {
        string Outcome(int seed)
        {
            using var engine = new MemoryEngine();
            var rng = new Random(seed);
            for (var round = 0; round < 5; round++)
            {
                for (var i = 0; i < 8; i++)
                {
                    engine.Write(new WriteBatch().Put([(byte)round, (byte)i], [(byte)i]).Delete([(byte)(round - 1), (byte)i]), sync: false);
                }

                engine.Crash(rng);
            }

            return Describe(engine.Scan([], Top));
        }

        for (var seed = 0; seed < 20; seed++)
        {
            Assert.Equal(Outcome(seed), Outcome(seed));
        }
    }

    [Fact]
    public void Kept_batches_become_durable_and_the_engine_stays_usable()
    {
        using var engine = new MemoryEngine();
        engine.Write(new WriteBatch().Put(S("a"), S("1")), sync: false);
        engine.Write(new WriteBatch().Put(S("b"), S("2")), sync: false);
        var rng = new Random(3);
        var lost = engine.Crash(rng);
        var survivors = Describe(engine.Scan([], Top));

        engine.Write(new WriteBatch().Put(S("c"), S("3")), sync: false);
        engine.Crash(); // Loses only "c": what survived the first crash is durable now.

        Assert.Equal(survivors, Describe(engine.Scan([], Top)));
        Assert.Equal(2, engine.Crashes);
        Assert.Equal(lost + 1, engine.LostWrites);
    }

    [Fact]
    public void Dispose_is_a_clean_shutdown_and_the_engine_remains_usable()
    {
        var engine = new MemoryEngine();
        engine.Write(new WriteBatch().Put(S("a"), S("1")), sync: false);
        engine.Dispose();
        engine.Crash();
        Assert.Equal(S("1"), engine.Get(S("a")));

        engine.Write(new WriteBatch().Put(S("b"), S("2")), sync: false);
        Assert.Equal(S("2"), engine.Get(S("b")));
        engine.Dispose();
    }

    [Fact]
    public void Stored_bytes_are_copies()
    {
        using var engine = new MemoryEngine();
        var key = S("k");
        var value = S("v");
        engine.Write(new WriteBatch().Put(key, value), sync: false);
        key[0] = (byte)'x';
        value[0] = (byte)'x';

        var read = engine.Get(S("k"))!;
        Assert.Equal(S("v"), read);
        read[0] = (byte)'y';
        Assert.Equal(S("v"), engine.Get(S("k")));
        var scanned = engine.Scan([], Top).Single();
        scanned.Value[0] = (byte)'y';
        scanned.Key[0] = (byte)'y';
        AssertSameEntries([new(S("k"), S("v"))], engine.Scan([], Top), "after mutating results");
    }

    [Fact]
    public void A_scan_reads_the_state_at_the_start_of_enumeration_and_tolerates_writes_during_it()
    {
        using var engine = new MemoryEngine();
        engine.Write(new WriteBatch().Put(S("a"), S("1")).Put(S("b"), S("2")), sync: false);
        var scan = engine.Scan([], Top);
        engine.Write(new WriteBatch().Put(S("c"), S("3")), sync: false); // Before enumeration: seen.

        var seen = new List<string>();
        foreach (var entry in scan)
        {
            seen.Add(System.Text.Encoding.ASCII.GetString(entry.Key));
            engine.Write(new WriteBatch().Put(S("d"), S("4")).Delete(S("c")), sync: false); // During: not seen, no exception.
        }

        Assert.Equal(["a", "b", "c"], seen);
    }

    [Fact]
    public void A_null_batch_is_rejected()
    {
        using var engine = new MemoryEngine();
        Assert.Throws<ArgumentNullException>(() => engine.Write(null!, sync: false));
        Assert.Equal(0, engine.PendingBatches);
    }

    /// <summary>
    /// Property: after any sequence of synced/unsynced batches, syncs and crashes, the state equals the durable
    /// model plus some prefix of the pending batches (all of them before the crash, none after a crash without a
    /// random).
    /// </summary>
    [Fact]
    public void Crashes_keep_the_durable_state_plus_a_prefix_of_pending_batches()
    {
        var key = Gen.Byte[0, 5].Array[1, 2];
        var op = Gen.Frequency(
            (3, Gen.Select(key, Gen.Byte, (k, v) => new WriteBatch.Op(WriteBatch.OpKind.Put, k, [v]))),
            (1, key.Select(k => new WriteBatch.Op(WriteBatch.OpKind.Delete, k, null))),
            (1, Gen.Select(key, key, (a, b) => new WriteBatch.Op(WriteBatch.OpKind.DeleteRange, a, b))));

        // A step: a batch (ops, sync flag), a Sync (null ops, sync), or a crash (null ops, not sync) with a seed.
        var step = Gen.Frequency(
            (8, Gen.Select(op.Array[0, 3], Gen.Int[0, 4], Gen.Int, (ops, s, seed) => (Ops: (WriteBatch.Op[]?)ops, Sync: s == 0, Seed: seed))),
            (1, Gen.Int.Select(seed => (Ops: (WriteBatch.Op[]?)null, Sync: true, Seed: seed))),
            (2, Gen.Int.Select(seed => (Ops: (WriteBatch.Op[]?)null, Sync: false, Seed: seed))));

        for (var i = 0; i < 300; i++)
        {
            step.Array[1, 40].Sample(steps =>
            {
                using var engine = new MemoryEngine();
                var durable = new SortedDictionary<byte[], byte[]>(NaiveComparer);
                var pending = new List<WriteBatch.Op[]>();
                foreach (var (ops, sync, seed) in steps)
                {
                    if (ops is not null)
                    {
                        engine.Write(ToBatch(ops), sync);
                        pending.Add(ops);
                        if (sync)
                        {
                            Flush(durable, pending);
                        }
                    }
                    else if (sync)
                    {
                        engine.Sync();
                        Flush(durable, pending);
                    }
                    else
                    {
                        var candidates = new List<string>();
                        var state = new SortedDictionary<byte[], byte[]>(durable, NaiveComparer);
                        candidates.Add(Describe(state));
                        foreach (var batch in pending)
                        {
                            Apply(state, batch);
                            candidates.Add(Describe(state));
                        }

                        var lost = seed % 2 == 0 ? engine.Crash() : engine.Crash(new Random(seed));
                        var actual = Describe(engine.Scan([], Top));
                        var kept = pending.Count - lost;
                        Assert.Equal(candidates[kept], actual);
                        if (seed % 2 == 0)
                        {
                            Assert.Equal(0, kept);
                        }

                        pending.RemoveRange(kept, lost);
                        Flush(durable, pending);
                    }
                }
            }, seed: new PCG(7, (ulong)i).ToString(), iter: 1, threads: 1, print: PrintSteps);
        }
    }

    private static string PrintSteps((WriteBatch.Op[]? Ops, bool Sync, int Seed)[] steps) => string.Join("; ", steps.Select(s =>
        s.Ops is null
            ? s.Sync ? "Sync" : s.Seed % 2 == 0 ? "Crash()" : $"Crash(new Random({s.Seed}))"
            : $"Write(sync={s.Sync}: {string.Join(", ", s.Ops.Select(o => $"{o.Kind}({Hex(o.Key)}, {Hex(o.Value)})"))})"));

    private static WriteBatch ToBatch(WriteBatch.Op[] ops)
    {
        var batch = new WriteBatch();
        foreach (var op in ops)
        {
            _ = op.Kind switch
            {
                WriteBatch.OpKind.Put => batch.Put(op.Key, op.Value!),
                WriteBatch.OpKind.Delete => batch.Delete(op.Key),
                _ => batch.DeleteRange(op.Key, op.Value!),
            };
        }

        return batch;
    }

    private static void Flush(SortedDictionary<byte[], byte[]> durable, List<WriteBatch.Op[]> pending)
    {
        foreach (var batch in pending)
        {
            Apply(durable, batch);
        }

        pending.Clear();
    }

    private static void Apply(SortedDictionary<byte[], byte[]> state, WriteBatch.Op[] batch)
    {
        foreach (var op in batch)
        {
            switch (op.Kind)
            {
                case WriteBatch.OpKind.Put:
                    state[op.Key] = op.Value!;
                    break;
                case WriteBatch.OpKind.Delete:
                    state.Remove(op.Key);
                    break;
                default:
                    foreach (var k in state.Keys.Where(k => NaiveCompare(k, op.Key) >= 0 && NaiveCompare(k, op.Value!) < 0).ToList())
                    {
                        state.Remove(k);
                    }

                    break;
            }
        }
    }
}
