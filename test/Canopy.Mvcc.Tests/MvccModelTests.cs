using System.Globalization;
using Canopy.Clock;
using Canopy.Storage;
using CsCheck;
using static Canopy.Mvcc.Tests.Bytes;

namespace Canopy.Mvcc.Tests;

/// <summary>
/// Model test: random sequences of raw writes (Put/Delete batches), intents (put, resolve, epoch restarts), garbage
/// collection and reads (Get, GetWithUncertainty, Scan with limits and readers, GetNewestTimestamp) run against
/// <see cref="MvccStore"/> on <see cref="MemoryEngine"/> and on <see cref="RocksDbEngine"/>, and against a plain in-memory
/// model that keeps the full history of every key. Every read must match the model exactly, and at the end the raw
/// engine contents must decode to the model's stored versions and intents.
///
/// GC is checked against the full history: after a GC at threshold G, reads (clamped to at or above G) must still see
/// exactly what the never-collected history says. Writes are clamped above G too, as the range refuses writes below
/// its GC threshold. Small key and timestamp alphabets make collisions, shadowing and escapes (0x00 bytes) common.
/// </summary>
public sealed class MvccModelTests
{
    private static readonly Guid[] Txns = [new("0000000a-0000-0000-0000-0000000000a1"), new("0000000b-0000-0000-0000-0000000000b2")];

    private static readonly Gen<byte[]> Key = Gen.OneOf<byte>(0x00, 0x01, 0x7F, 0xFF).Array[0, 2];
    private static readonly Gen<HlcTimestamp> Ts = Gen.Select(Gen.Long[1, 6], Gen.Int[0, 2], (w, l) => new HlcTimestamp(w, l));
    private static readonly Gen<byte[]?> Value = Gen.Frequency((4, Gen.Byte.Array[0, 3].Select(v => (byte[]?)v)), (1, Gen.Const((byte[]?)null)));
    private static readonly Gen<int?> Reader = Gen.Int[-2, 1].Select(i => i < 0 ? (int?)null : i);
    private static readonly Gen<int> Uncertainty = Gen.Frequency((2, Gen.Const(0)), (1, Gen.Int[1, 3]));

    private static readonly Gen<Step> AnyStep = Gen.Frequency(
        (5, Gen.Select(Key, Ts, Value, (k, t, v) => new WriteOp(k, t, v)).Array[1, 3].Select(ops => (Step)new WriteStep(ops))),
        (4, Gen.Select(Gen.Int[0, 1], Gen.Int[0, 5], Key, Ts, Value, (txn, stale, k, t, v) => (Step)new PutIntentStep(txn, stale == 0, k, t, v))),
        (3, Gen.Select(Gen.Int[0, 1], Key, Gen.Int[0, 3], Gen.Int[0, 3], Gen.Int[0, 2], (txn, k, commit, nextEpoch, delta) => (Step)new ResolveStep(txn, k, commit != 0, nextEpoch == 0, delta))),
        (1, Gen.Int[0, 1].Select(txn => (Step)new RestartStep(txn))),
        (6, Gen.Select(Key, Ts, Reader, Uncertainty, (k, t, r, u) => (Step)new GetStep(k, t, r, u))),
        (4, Gen.Select(Key, Key.Array[0, 1], Ts, Gen.Int[1, 4], Gen.Select(Reader, Uncertainty), (s, e, t, max, ru) =>
            (Step)new ScanStep(s, e.Length == 0 ? null : e[0], t, max, ru.Item1, ru.Item2))),
        (2, Key.Select(k => (Step)new NewestStep(k))),
        (1, Gen.Select(Key, Key.Array[0, 1], Ts, (s, e, t) => (Step)new GcStep(s, e.Length == 0 ? null : e[0], t))));

    private static readonly Gen<Step[]> Steps = AnyStep.Array[1, 60];

    [Fact]
    public void MvccStore_on_MemoryEngine_matches_the_model()
    {
        Seeds.ForSeeds(Steps, 400, salt: 1, steps =>
        {
            using var memory = new MemoryEngine();
            Run(steps, new MvccStore(memory));
        }, Print);
    }

    [Fact]
    public void MvccStore_on_RocksDbEngine_and_MemoryEngine_match_the_model()
    {
        using var dir = new TempDirectory();
        using var rocks = RocksDbEngine.Open(dir.Path);
        Seeds.ForSeeds(Steps, 80, salt: 2, steps =>
        {
            // One database for every case (opening one per case is slow): wipe it first.
            rocks.Write(new WriteBatch().DeleteRange([0x00], [0xFF, 0xFF]), sync: false);
            Assert.Empty(rocks.Scan([0x00], [0xFF, 0xFF]));
            using var memory = new MemoryEngine();
            Run(steps, new MvccStore(rocks), new MvccStore(memory));
        }, Print);
    }

    private static void Run(Step[] steps, params MvccStore[] stores)
    {
        var model = new Model();
        for (var i = 0; i < steps.Length; i++)
        {
            var step = steps[i];
            var context = $"step {i} ({Print(step)})";
            switch (step)
            {
                case WriteStep write:
                    var ops = write.Ops.Select(op => op with { Ts = model.ClampWrite(op.Ts) }).ToList();
                    foreach (var store in stores)
                    {
                        var batch = new WriteBatch();
                        foreach (var op in ops)
                        {
                            if (op.Value is null)
                            {
                                store.Delete(batch, op.Key, op.Ts);
                            }
                            else
                            {
                                store.Put(batch, op.Key, op.Ts, op.Value);
                            }
                        }

                        store.Engine.Write(batch, sync: false);
                    }

                    ops.ForEach(op => model.Write(op.Key, op.Ts, op.Value));
                    break;

                case PutIntentStep put:
                    var epoch = Math.Max(0, model.Epochs[put.Txn] - (put.StaleEpoch ? 1 : 0));
                    var intent = new MvccIntent(Txns[put.Txn], epoch, model.ClampWrite(put.Ts), put.Value);
                    var expectedPut = Describe(model.PutIntent(put.Key, intent));
                    foreach (var store in stores)
                    {
                        var batch = new WriteBatch();
                        var actual = Describe(store.PutIntent(batch, put.Key, intent));
                        Assert.True(expectedPut == actual, $"{context} on {Name(store)}: expected {expectedPut} but got {actual}");
                        store.Engine.Write(batch, sync: false);
                    }

                    break;

                case ResolveStep resolve:
                    var resolution = model.ResolutionFor(Txns[resolve.Txn], resolve);
                    var expectedOutcome = model.Resolve(resolve.Key, resolution);
                    foreach (var store in stores)
                    {
                        var batch = new WriteBatch();
                        var outcome = store.ResolveIntent(batch, resolve.Key, resolution);
                        Assert.True(expectedOutcome == outcome, $"{context} ({resolution}) on {Name(store)}: expected {expectedOutcome} but got {outcome}");
                        store.Engine.Write(batch, sync: false);
                    }

                    break;

                case RestartStep restart:
                    model.Epochs[restart.Txn] = Math.Min(3, model.Epochs[restart.Txn] + 1);
                    break;

                case GetStep get:
                    var readTs = model.ClampRead(get.ReadTs);
                    var limit = Limit(readTs, get.Uncertainty);
                    var reader = model.ReaderFor(get.Reader);
                    var expectedGet = model.Get(get.Key, readTs, limit, reader);
                    foreach (var store in stores)
                    {
                        var actual = Describe(get.Uncertainty == 0 ? store.Get(get.Key, readTs, reader) : store.GetWithUncertainty(get.Key, readTs, limit, reader));
                        Assert.True(expectedGet == actual, $"{context} at {readTs} limit {limit} on {Name(store)}: expected {expectedGet} but got {actual}");
                    }

                    break;

                case ScanStep scan:
                    var scanTs = model.ClampRead(scan.ReadTs);
                    var scanLimit = Limit(scanTs, scan.Uncertainty);
                    var scanReader = model.ReaderFor(scan.Reader);
                    var expectedScan = model.Scan(scan.Start, scan.End, scanTs, scanLimit, scan.MaxKeys, scanReader);
                    foreach (var store in stores)
                    {
                        var actual = Describe(store.Scan(scan.Start, scan.End, scanTs, scan.MaxKeys, scanReader, scan.Uncertainty == 0 ? null : scanLimit));
                        Assert.True(expectedScan == actual, $"{context} at {scanTs} limit {scanLimit} on {Name(store)}: expected {expectedScan} but got {actual}");
                    }

                    break;

                case NewestStep newest:
                    foreach (var store in stores)
                    {
                        var actual = store.GetNewestTimestamp(newest.Key);
                        Assert.True(model.NewestMatches(newest.Key, actual), $"{context} on {Name(store)}: got {actual?.ToString() ?? "none"}, model history {model.DescribeHistory(newest.Key)}");
                    }

                    break;

                case GcStep gc:
                    var expectedStats = model.Gc(gc.Start, gc.End, gc.Threshold);
                    foreach (var store in stores)
                    {
                        var batch = new WriteBatch();
                        var stats = store.GarbageCollect(batch, gc.Start, gc.End, gc.Threshold);
                        Assert.True(expectedStats == stats, $"{context} on {Name(store)}: expected {expectedStats} but got {stats}");
                        store.Engine.Write(batch, sync: false);
                    }

                    break;
            }
        }

        var expectedState = model.DescribeStored();
        foreach (var store in stores)
        {
            var actual = DescribeEngine(store.Engine);
            Assert.True(expectedState == actual, $"final engine contents of {Name(store)}: expected {expectedState} but got {actual}");
        }
    }

    private static HlcTimestamp Limit(HlcTimestamp readTs, int uncertainty) =>
        uncertainty == 0 ? readTs : new HlcTimestamp(readTs.WallNanos + uncertainty, readTs.Logical);

    private static string Name(MvccStore store) => store.Engine.GetType().Name;

    private static string Describe(MvccWriteResult r) => $"{r.Status} {r.Intent?.ToString() ?? "-"} {r.MinimumTimestamp?.ToString() ?? "-"}";

    private static string Describe(MvccGetResult r) =>
        $"{r.Status} {(r.Value is null ? "-" : $"{Hex(r.Value.Bytes)}@{r.Value.Timestamp}{(r.Value.IsProvisional ? "(own)" : "")}")} {r.Intent?.ToString() ?? "-"} {r.UncertainTimestamp?.ToString() ?? "-"}";

    private static string Describe(MvccScanResult r) =>
        $"{r.Status} rows [{string.Join(", ", r.Rows.Select(Describe))}] intents [{string.Join(", ", r.Intents.Select(i => $"{Hex(i.Key)}: {i.Intent}"))}] " +
        $"resume {Hex(r.ResumeKey)} uncertain {Hex(r.UncertainKey)}@{r.UncertainTimestamp?.ToString() ?? "-"}";

    private static string Describe(MvccKeyValue row) => $"{Hex(row.Key)}={Hex(row.Value)}@{row.Timestamp}{(row.IsProvisional ? "(own)" : "")}";

    /// <summary>Every entry of the MVCC span, decoded: the store's raw state.</summary>
    private static string DescribeEngine(IStorageEngine engine) =>
        string.Join("; ", engine.Scan(MvccKeys.SpanStart, MvccKeys.SpanEnd).Select(e =>
        {
            var key = MvccKeys.Decode(e.Key);
            return key.IsIntent
                ? $"{Hex(key.UserKey)} {MvccIntent.Decode(e.Value)}"
                : $"{Hex(key.UserKey)}@{key.Timestamp} {(e.Value.Length == 1 && e.Value[0] == 0 ? "tombstone" : Hex(e.Value[1..]))}";
        }));

    private static string Print(Step[] steps) => string.Join("; ", steps.Select(Print));

    private static string Print(Step step) => step switch
    {
        WriteStep w => $"Write({string.Join(", ", w.Ops.Select(o => o.Value is null ? $"Del {Hex(o.Key)}@{o.Ts}" : $"Put {Hex(o.Key)}@{o.Ts}={Hex(o.Value)}"))})",
        PutIntentStep p => $"PutIntent(txn {p.Txn}{(p.StaleEpoch ? " stale" : "")}, {Hex(p.Key)}@{p.Ts}={Hex(p.Value)})",
        ResolveStep r => $"Resolve(txn {r.Txn}, {Hex(r.Key)}, {(r.Commit ? "commit" : "abort")}{(r.NextEpoch ? " next epoch" : "")} +{r.Delta})",
        RestartStep r => $"Restart(txn {r.Txn})",
        GetStep g => $"Get({Hex(g.Key)}@{g.ReadTs} reader {g.Reader?.ToString(CultureInfo.InvariantCulture) ?? "-"} +{g.Uncertainty})",
        ScanStep s => $"Scan([{Hex(s.Start)}, {Hex(s.End)})@{s.ReadTs} max {s.MaxKeys} reader {s.Reader?.ToString(CultureInfo.InvariantCulture) ?? "-"} +{s.Uncertainty})",
        NewestStep n => $"Newest({Hex(n.Key)})",
        GcStep g => $"Gc([{Hex(g.Start)}, {Hex(g.End)}) below {g.Threshold})",
        _ => step.ToString()!,
    };

    /// <summary>The reference: full history per key, the versions a store should still hold after GC, and intents.</summary>
    private sealed class Model
    {
        private readonly SortedDictionary<byte[], SortedDictionary<HlcTimestamp, byte[]?>> _history = new(NaiveComparer);
        private readonly SortedDictionary<byte[], SortedDictionary<HlcTimestamp, byte[]?>> _stored = new(NaiveComparer);
        private readonly SortedDictionary<byte[], MvccIntent> _intents = new(NaiveComparer);
        private HlcTimestamp _gcMax;

        public int[] Epochs { get; } = [0, 0];

        public HlcTimestamp ClampWrite(HlcTimestamp ts) => ts > _gcMax ? ts : _gcMax.Next();

        public HlcTimestamp ClampRead(HlcTimestamp ts) => HlcTimestamp.Max(ts, _gcMax);

        public MvccTxn? ReaderFor(int? txn) => txn is { } t ? new MvccTxn(Txns[t], Epochs[t]) : null;

        public void Write(byte[] key, HlcTimestamp ts, byte[]? value)
        {
            Versions(_history, key)[ts] = value;
            Versions(_stored, key)[ts] = value;
        }

        public MvccWriteResult PutIntent(byte[] key, MvccIntent intent)
        {
            if (_intents.TryGetValue(key, out var existing))
            {
                if (existing.TxnId != intent.TxnId)
                {
                    return new MvccWriteResult(MvccWriteStatus.IntentConflict, existing, null);
                }

                if (existing.Epoch > intent.Epoch)
                {
                    return new MvccWriteResult(MvccWriteStatus.StaleEpoch, existing, null);
                }

                if (existing.Epoch == intent.Epoch && existing.WriteTimestamp > intent.WriteTimestamp)
                {
                    intent = intent with { WriteTimestamp = existing.WriteTimestamp };
                }
            }

            var newest = _stored.TryGetValue(key, out var versions) && versions.Count > 0 ? versions.Keys.Max() : (HlcTimestamp?)null;
            if (newest is { } n && n >= intent.WriteTimestamp)
            {
                return new MvccWriteResult(MvccWriteStatus.WriteTooOld, null, n.Next());
            }

            _intents[key] = intent;
            return new MvccWriteResult(MvccWriteStatus.Ok, intent, null);
        }

        /// <summary>A legal resolution for the step: never below the intent's epoch or timestamp (those are protocol bugs that throw).</summary>
        public MvccResolution ResolutionFor(Guid txn, ResolveStep step)
        {
            if (!step.Commit)
            {
                return MvccResolution.Abort(txn);
            }

            var intent = _intents.GetValueOrDefault(step.Key);
            if (intent is null || intent.TxnId != txn)
            {
                return MvccResolution.Commit(txn, 0, ClampWrite(new HlcTimestamp(3, 0)));
            }

            var ts = intent.WriteTimestamp;
            var commitTs = step.Delta switch
            {
                0 => ts,
                1 => ts.Next(),
                _ => new HlcTimestamp(ts.WallNanos + 1, 0),
            };
            return MvccResolution.Commit(txn, intent.Epoch + (step.NextEpoch ? 1 : 0), commitTs);
        }

        public MvccResolveOutcome Resolve(byte[] key, MvccResolution resolution)
        {
            if (!_intents.TryGetValue(key, out var intent) || intent.TxnId != resolution.TxnId)
            {
                return MvccResolveOutcome.NoIntent;
            }

            _intents.Remove(key);
            if (!resolution.IsCommit || intent.Epoch < resolution.Epoch)
            {
                return MvccResolveOutcome.Removed;
            }

            Write(key, resolution.CommitTimestamp, intent.Value);
            return MvccResolveOutcome.Committed;
        }

        public string Get(byte[] key, HlcTimestamp readTs, HlcTimestamp limit, MvccTxn? reader) => ReadKey(key, readTs, limit, reader) switch
        {
            Row r => $"Ok {Hex(r.Value)}@{r.Ts}{(r.Own ? "(own)" : "")} - -",
            Conflict c => $"IntentConflict - {c.Intent} -",
            Uncertain u => $"ReadWithinUncertainty - - {u.Ts}",
            _ => "Ok - - -",
        };

        public string Scan(byte[] start, byte[]? end, HlcTimestamp readTs, HlcTimestamp limit, int maxKeys, MvccTxn? reader)
        {
            // The user keys that have anything stored (what a store iterates over), in order.
            var keys = _stored.Where(e => e.Value.Count > 0).Select(e => e.Key).Union(_intents.Keys).Distinct(ByteArrayComparer.Instance)
                .Where(k => NaiveCompare(k, start) >= 0 && (end is null || NaiveCompare(k, end) < 0))
                .Order(NaiveComparer)
                .ToList();
            var rows = new List<string>();
            var intents = new List<string>();
            byte[]? resume = null;
            foreach (var key in keys)
            {
                if (rows.Count >= maxKeys)
                {
                    resume = key;
                    break;
                }

                switch (ReadKey(key, readTs, limit, reader))
                {
                    case Row r:
                        rows.Add($"{Hex(key)}={Hex(r.Value)}@{r.Ts}{(r.Own ? "(own)" : "")}");
                        break;
                    case Conflict c:
                        intents.Add($"{Hex(key)}: {c.Intent}");
                        break;
                    case Uncertain u:
                        return $"ReadWithinUncertainty rows [{string.Join(", ", rows)}] intents [{string.Join(", ", intents)}] resume null uncertain {Hex(key)}@{u.Ts}";
                }
            }

            var status = intents.Count > 0 ? MvccReadStatus.IntentConflict : MvccReadStatus.Ok;
            return $"{status} rows [{string.Join(", ", rows)}] intents [{string.Join(", ", intents)}] resume {Hex(resume)} uncertain null@-";
        }

        /// <summary>The store's newest timestamp may lack versions at or below the GC threshold that GC removed.</summary>
        public bool NewestMatches(byte[] key, HlcTimestamp? actual)
        {
            var expected = _stored.TryGetValue(key, out var versions) && versions.Count > 0 ? versions.Keys.Max() : (HlcTimestamp?)null;
            return expected == actual;
        }

        public string DescribeHistory(byte[] key) =>
            _history.TryGetValue(key, out var v) ? string.Join(", ", v.Select(e => $"{e.Key}={Hex(e.Value)}")) : "none";

        /// <summary>Applies the GC rule to the stored versions (the history keeps everything).</summary>
        public MvccGcStats Gc(byte[] start, byte[]? end, HlcTimestamp threshold)
        {
            _gcMax = HlcTimestamp.Max(_gcMax, threshold);
            var keys = 0;
            var removed = 0;
            if (end is not null && NaiveCompare(start, end) >= 0)
            {
                return new MvccGcStats(0, 0);
            }

            foreach (var (key, versions) in _stored)
            {
                if (NaiveCompare(key, start) < 0 || (end is not null && NaiveCompare(key, end) >= 0) || versions.Count == 0)
                {
                    continue;
                }

                keys++;
                var atOrBelow = versions.Keys.Where(t => t <= threshold).OrderDescending().ToList();
                var doomed = atOrBelow.Skip(1).ToList();
                if (atOrBelow.Count > 0 && versions[atOrBelow[0]] is null)
                {
                    doomed.Add(atOrBelow[0]);
                }

                doomed.ForEach(t => versions.Remove(t));
                removed += doomed.Count;
            }

            return new MvccGcStats(keys, removed);
        }

        public string DescribeStored()
        {
            var lines = new List<string>();
            foreach (var key in _stored.Keys.Union(_intents.Keys).Distinct(ByteArrayComparer.Instance).Order(NaiveComparer))
            {
                if (_intents.TryGetValue(key, out var intent))
                {
                    lines.Add($"{Hex(key)} {intent}");
                }

                if (_stored.TryGetValue(key, out var versions))
                {
                    lines.AddRange(versions.OrderByDescending(v => v.Key).Select(v => $"{Hex(key)}@{v.Key} {(v.Value is null ? "tombstone" : Hex(v.Value))}"));
                }
            }

            return string.Join("; ", lines);
        }

        private static SortedDictionary<HlcTimestamp, byte[]?> Versions(SortedDictionary<byte[], SortedDictionary<HlcTimestamp, byte[]?>> map, byte[] key)
        {
            if (!map.TryGetValue(key, out var versions))
            {
                map[key] = versions = [];
            }

            return versions;
        }

        /// <summary>The read rule, from the full history: what a read of one key at readTs (uncertain up to limit) sees.</summary>
        private object? ReadKey(byte[] key, HlcTimestamp readTs, HlcTimestamp limit, MvccTxn? reader)
        {
            if (_intents.TryGetValue(key, out var intent))
            {
                if (reader is { } r && r.Id == intent.TxnId)
                {
                    if (intent.Epoch == r.Epoch)
                    {
                        return intent.Value is null ? null : new Row(intent.Value, intent.WriteTimestamp, Own: true);
                    }
                }
                else if (intent.WriteTimestamp <= limit)
                {
                    return new Conflict(intent);
                }
            }

            if (!_history.TryGetValue(key, out var versions))
            {
                return null;
            }

            var visible = versions.Where(v => v.Key <= limit).OrderByDescending(v => v.Key).Take(1).ToList();
            if (visible.Count == 0)
            {
                return null;
            }

            var (ts, value) = visible[0];
            if (ts > readTs)
            {
                return new Uncertain(ts);
            }

            return value is null ? null : new Row(value, ts, Own: false);
        }

        private sealed record Row(byte[] Value, HlcTimestamp Ts, bool Own);

        private sealed record Conflict(MvccIntent Intent);

        private sealed record Uncertain(HlcTimestamp Ts);
    }

    private abstract record Step;

    /// <summary>One atomic batch of raw writes; a null value is a deletion.</summary>
    private sealed record WriteStep(WriteOp[] Ops) : Step;

    private sealed record WriteOp(byte[] Key, HlcTimestamp Ts, byte[]? Value);

    /// <summary>An intent of txn <see cref="Txn"/> in its current epoch (or the one before, a delayed write).</summary>
    private sealed record PutIntentStep(int Txn, bool StaleEpoch, byte[] Key, HlcTimestamp Ts, byte[]? Value) : Step;

    /// <summary>Commit (at the intent's timestamp + Delta, maybe in a later epoch) or abort txn <see cref="Txn"/>'s intent.</summary>
    private sealed record ResolveStep(int Txn, byte[] Key, bool Commit, bool NextEpoch, int Delta) : Step;

    /// <summary>The transaction restarts: its epoch goes up.</summary>
    private sealed record RestartStep(int Txn) : Step;

    /// <summary>A read by txn Reader (null: non-transactional), with an uncertainty window of Uncertainty wall units.</summary>
    private sealed record GetStep(byte[] Key, HlcTimestamp ReadTs, int? Reader, int Uncertainty) : Step;

    private sealed record ScanStep(byte[] Start, byte[]? End, HlcTimestamp ReadTs, int MaxKeys, int? Reader, int Uncertainty) : Step;

    private sealed record NewestStep(byte[] Key) : Step;

    private sealed record GcStep(byte[] Start, byte[]? End, HlcTimestamp Threshold) : Step;
}
