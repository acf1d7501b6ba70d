using Canopy.Clock;
using Canopy.Storage;
using CsCheck;
using static Canopy.Mvcc.Tests.Bytes;

namespace Canopy.Mvcc.Tests;

/// <summary>
/// <see cref="MvccStore"/> case by case: visibility, deletions, intents as conflicts and read-your-writes, uncertainty,
/// write-too-old, intent resolution, scan limits and garbage collection. The model test covers the same rules at random.
/// </summary>
public sealed class MvccStoreTests
{
    private static readonly Guid TxnA = new("aaaaaaaa-0000-0000-0000-000000000001");
    private static readonly Guid TxnB = new("bbbbbbbb-0000-0000-0000-000000000002");

    private readonly MemoryEngine _engine = new();
    private readonly MvccStore _store;

    public MvccStoreTests() => _store = new MvccStore(_engine);

    [Fact]
    public void A_read_sees_the_newest_version_at_or_below_its_timestamp()
    {
        Put("k", 10, "v10");
        Put("k", 20, "v20");
        Put("k", 30, "v30");

        Assert.False(_store.Get(S("k"), T(9)).IsFound);
        Assert.Equal(("v10", T(10)), Read("k", 10));
        Assert.Equal(("v20", T(20)), Read("k", 29));
        Assert.Equal(("v30", T(30)), Read("k", 1000));
        Assert.False(_store.Get(S("other"), T(1000)).IsFound);
    }

    [Fact]
    public void A_deletion_hides_the_key_and_an_empty_value_is_not_a_deletion()
    {
        Put("k", 10, "v10");
        Apply(b => _store.Delete(b, S("k"), T(20)));
        Apply(b => _store.Put(b, S("e"), T(10), []));

        Assert.Equal(("v10", T(10)), Read("k", 19));
        var deleted = _store.Get(S("k"), T(20));
        Assert.Equal(MvccReadStatus.Ok, deleted.Status);
        Assert.Null(deleted.Value);
        Assert.Equal(("", T(10)), Read("e", 10));
    }

    [Fact]
    public void Another_transactions_intent_at_or_below_the_read_is_a_conflict_above_it_is_ignored()
    {
        Put("k", 10, "v10");
        var intent = new MvccIntent(TxnA, 0, T(20), S("mine"));
        Assert.Equal(MvccWriteStatus.Ok, PutIntent("k", intent).Status);

        var conflict = _store.Get(S("k"), T(20));
        Assert.Equal(MvccReadStatus.IntentConflict, conflict.Status);
        Assert.Equal(intent, conflict.Intent);
        Assert.Null(conflict.Value);
        Assert.Equal(MvccReadStatus.IntentConflict, _store.Get(S("k"), T(25), new MvccTxn(TxnB, 0)).Status);

        Assert.Equal(("v10", T(10)), Read("k", 19)); // the intent is above the read: invisible
        var uncertain = _store.GetWithUncertainty(S("k"), T(19), T(20)); // but within the uncertainty window: a conflict
        Assert.Equal(MvccReadStatus.IntentConflict, uncertain.Status);
    }

    [Fact]
    public void A_transaction_reads_its_own_intent_of_its_current_epoch_only()
    {
        Put("k", 10, "v10");
        PutIntent("k", new MvccIntent(TxnA, 1, T(20), S("mine")));

        var own = _store.Get(S("k"), T(15), new MvccTxn(TxnA, 1)); // visible whatever its timestamp
        Assert.True(own.IsFound);
        Assert.Equal(new MvccValue(own.Value!.Bytes, T(20), IsProvisional: true), own.Value);
        Assert.Equal("mine", Str(own.Value.Bytes));

        var restarted = _store.Get(S("k"), T(25), new MvccTxn(TxnA, 2)); // epoch 1's write does not count in epoch 2
        Assert.Equal("v10", Str(restarted.Value!.Bytes));
        Assert.False(restarted.Value.IsProvisional);

        Assert.Throws<InvalidOperationException>(() => _store.Get(S("k"), T(25), new MvccTxn(TxnA, 0)));

        PutIntent("d", new MvccIntent(TxnA, 1, T(20), null)); // own deletion
        Put("d", 5, "old");
        Assert.Equal(new MvccGetResult(MvccReadStatus.Ok, null, null, null), _store.Get(S("d"), T(30), new MvccTxn(TxnA, 1)));
    }

    [Fact]
    public void A_version_in_the_uncertainty_window_is_reported_with_the_newest_timestamp_in_it()
    {
        Put("k", 10, "v10");
        Put("k", 14, "v14");
        Put("k", 16, "v16");
        Put("k", 30, "v30");

        var result = _store.GetWithUncertainty(S("k"), T(12), T(20));
        Assert.Equal(MvccReadStatus.ReadWithinUncertainty, result.Status);
        Assert.Equal(T(16), result.UncertainTimestamp);
        Assert.Null(result.Value);

        Assert.Equal(("v10", T(10)), Read("k", 12, 13)); // nothing in (12, 13]
        Assert.Equal(("v16", T(16)), Read("k", 16, 29)); // the window ends below 30
        Assert.Equal(("v16", T(16)), Read("k", 16, 12)); // a limit below the read means no window
        Assert.Equal(MvccReadStatus.ReadWithinUncertainty, _store.GetWithUncertainty(S("k"), T(16), T(30)).Status);

        // A restart above the uncertain timestamp reads cleanly.
        Assert.Equal(("v16", T(16)), Read("k", 16, 16 + 8));
    }

    [Fact]
    public void Uncertainty_stops_a_scan_at_the_uncertain_key()
    {
        Put("a", 10, "a10");
        Put("b", 15, "b15");
        Put("c", 10, "c10");

        var scan = _store.Scan(S("a"), null, T(12), 10, uncertaintyLimit: T(20));
        Assert.Equal(MvccReadStatus.ReadWithinUncertainty, scan.Status);
        Assert.Equal("b", Str(scan.UncertainKey!));
        Assert.Equal(T(15), scan.UncertainTimestamp);
    }

    [Fact]
    public void A_scan_skips_deletions_reports_intents_and_stops_at_the_row_limit()
    {
        Put("a", 10, "a10");
        Put("b", 10, "b10");
        Apply(b => _store.Delete(b, S("b"), T(11)));
        Put("c", 10, "c10");
        PutIntent("d", new MvccIntent(TxnB, 0, T(5), S("d-intent")));
        Put("e", 10, "e10");
        Put("f", 10, "f10");

        var all = _store.Scan([], null, T(20), 100);
        Assert.Equal(MvccReadStatus.IntentConflict, all.Status);
        Assert.Equal(["a", "c", "e", "f"], all.Rows.Select(r => Str(r.Key)));
        Assert.Equal(["a10", "c10", "e10", "f10"], all.Rows.Select(r => Str(r.Value)));
        var met = Assert.Single(all.Intents);
        Assert.Equal("d", Str(met.Key));
        Assert.Equal(TxnB, met.Intent.TxnId);
        Assert.Null(all.ResumeKey);

        var limited = _store.Scan(S("a"), S("f"), T(20), 2);
        Assert.Equal(MvccReadStatus.Ok, limited.Status);
        Assert.Equal(["a", "c"], limited.Rows.Select(r => Str(r.Key)));
        Assert.Equal("d", Str(limited.ResumeKey!));

        var own = _store.Scan(S("c"), S("f"), T(20), 10, new MvccTxn(TxnB, 0));
        Assert.Equal(MvccReadStatus.Ok, own.Status);
        Assert.Equal(["c", "d", "e"], own.Rows.Select(r => Str(r.Key)));
        Assert.True(own.Rows[1].IsProvisional);

        Assert.Empty(_store.Scan(S("f"), S("a"), T(20), 10).Rows);
        Assert.Throws<ArgumentOutOfRangeException>(() => _store.Scan([], null, T(20), 0));
    }

    [Fact]
    public void Paging_with_the_resume_key_returns_every_row_once()
    {
        var keys = Gen.Byte.Array[0, 3].Array[0, 30];
        Seeds.ForSeeds(Gen.Select(keys, Gen.Int[1, 5]), 200, salt: 7, t =>
        {
            var (written, page) = t;
            using var engine = new MemoryEngine();
            var store = new MvccStore(engine);
            var batch = new WriteBatch();
            foreach (var k in written)
            {
                store.Put(batch, k, T(1), k);
            }

            engine.Write(batch, sync: false);

            var seen = new List<byte[]>();
            byte[]? from = [];
            while (from is not null)
            {
                var result = store.Scan(from, null, T(1), page);
                Assert.True(result.Rows.Count <= page);
                seen.AddRange(result.Rows.Select(r => r.Key));
                from = result.ResumeKey;
            }

            var expected = written.Distinct(ByteArrayComparer.Instance).Order(NaiveComparer).Select(Hex);
            Assert.Equal(expected, seen.Select(Hex));
        });
    }

    [Fact]
    public void Write_too_old_is_detected_against_the_newest_version_deletions_included()
    {
        Assert.Null(_store.GetNewestTimestamp(S("k")));
        Assert.False(_store.IsWriteTooOld(S("k"), T(1), out var minimum));
        Assert.Equal(T(1), minimum);

        Put("k", 10, "v10");
        Apply(b => _store.Delete(b, S("k"), T(20)));
        PutIntent("k", new MvccIntent(TxnA, 0, T(30), S("intent"))); // intents are not versions
        Assert.Equal(T(20), _store.GetNewestTimestamp(S("k")));

        Assert.True(_store.IsWriteTooOld(S("k"), T(20), out minimum));
        Assert.Equal(new HlcTimestamp(20, 1), minimum);
        Assert.True(_store.IsWriteTooOld(S("k"), T(15), out _));
        Assert.False(_store.IsWriteTooOld(S("k"), new HlcTimestamp(20, 1), out _));
    }

    [Fact]
    public void PutIntent_refuses_conflicts_old_writes_and_stale_epochs_and_never_lowers_its_timestamp()
    {
        Put("k", 10, "v10");

        var tooOld = PutIntent("k", new MvccIntent(TxnA, 0, T(10), S("x")));
        Assert.Equal(new MvccWriteResult(MvccWriteStatus.WriteTooOld, null, new HlcTimestamp(10, 1)), tooOld);
        Assert.Null(_store.GetIntent(S("k")));

        var first = new MvccIntent(TxnA, 1, T(20), S("x"));
        Assert.Equal(new MvccWriteResult(MvccWriteStatus.Ok, first, null), PutIntent("k", first));

        var other = PutIntent("k", new MvccIntent(TxnB, 0, T(40), S("y")));
        Assert.Equal(MvccWriteStatus.IntentConflict, other.Status);
        Assert.Equal(first, other.Intent);

        var stale = PutIntent("k", new MvccIntent(TxnA, 0, T(40), S("late")));
        Assert.Equal(MvccWriteStatus.StaleEpoch, stale.Status);
        Assert.Equal(first, _store.GetIntent(S("k")));

        var rewrite = PutIntent("k", new MvccIntent(TxnA, 1, T(15), S("x2")));
        Assert.Equal(new MvccIntent(TxnA, 1, T(20), S("x2")), rewrite.Intent);
        Assert.Equal(rewrite.Intent, _store.GetIntent(S("k")));

        var nextEpoch = PutIntent("k", new MvccIntent(TxnA, 2, T(12), S("x3"))); // a new epoch may start lower
        Assert.Equal(new MvccIntent(TxnA, 2, T(12), S("x3")), nextEpoch.Intent);
    }

    [Fact]
    public void Committing_writes_the_value_at_the_commit_timestamp_and_is_idempotent()
    {
        PutIntent("k", new MvccIntent(TxnA, 0, T(20), S("x")));

        Assert.Equal(MvccResolveOutcome.NoIntent, Resolve("k", MvccResolution.Commit(TxnB, 0, T(25))));
        Assert.NotNull(_store.GetIntent(S("k")));

        Assert.Equal(MvccResolveOutcome.Committed, Resolve("k", MvccResolution.Commit(TxnA, 0, T(25))));
        Assert.Null(_store.GetIntent(S("k")));
        Assert.False(_store.Get(S("k"), T(24)).IsFound); // not at the intent's timestamp: at the commit timestamp
        Assert.Equal(("x", T(25)), Read("k", 25));
        Assert.Equal(MvccResolveOutcome.NoIntent, Resolve("k", MvccResolution.Commit(TxnA, 0, T(25))));

        PutIntent("d", new MvccIntent(TxnA, 0, T(30), null));
        Assert.Equal(MvccResolveOutcome.Committed, Resolve("d", MvccResolution.Commit(TxnA, 0, T(30))));
        Assert.Equal(T(30), _store.GetNewestTimestamp(S("d"))); // a committed deletion is a tombstone version
    }

    [Fact]
    public void Aborting_or_committing_a_later_epoch_removes_the_intent()
    {
        Put("k", 10, "v10");
        PutIntent("k", new MvccIntent(TxnA, 0, T(20), S("x")));
        Assert.Equal(MvccResolveOutcome.Removed, Resolve("k", MvccResolution.Abort(TxnA)));
        Assert.Null(_store.GetIntent(S("k")));
        Assert.Equal(("v10", T(10)), Read("k", 100));
        Assert.Equal(MvccResolveOutcome.NoIntent, Resolve("k", MvccResolution.Abort(TxnA)));

        PutIntent("k", new MvccIntent(TxnA, 0, T(20), S("x")));
        Assert.Equal(MvccResolveOutcome.Removed, Resolve("k", MvccResolution.Commit(TxnA, 1, T(30))));
        Assert.Equal(("v10", T(10)), Read("k", 100));
    }

    [Fact]
    public void Committing_below_the_intent_or_in_an_earlier_epoch_is_a_protocol_error()
    {
        PutIntent("k", new MvccIntent(TxnA, 2, T(20), S("x")));
        var below = Assert.Throws<InvalidOperationException>(() => _store.ResolveIntent(new WriteBatch(), S("k"), MvccResolution.Commit(TxnA, 2, T(19))));
        Assert.Contains("above the commit timestamp", below.Message, StringComparison.Ordinal);
        var earlier = Assert.Throws<InvalidOperationException>(() => _store.ResolveIntent(new WriteBatch(), S("k"), MvccResolution.Commit(TxnA, 1, T(30))));
        Assert.Contains("from a later epoch", earlier.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Gc_keeps_the_newest_version_at_or_below_the_threshold_unless_it_is_a_deletion()
    {
        Put("a", 10, "a10");
        Put("a", 20, "a20");
        Put("a", 30, "a30");
        Put("b", 10, "b10");
        Apply(b => _store.Delete(b, S("b"), T(20)));
        Put("b", 30, "b30");
        Put("c", 10, "c10");
        Apply(b => _store.Delete(b, S("c"), T(20)));
        PutIntent("c", new MvccIntent(TxnA, 0, T(40), S("c-intent")));
        Put("d", 10, "d10");

        var batch = new WriteBatch();
        var stats = _store.GarbageCollect(batch, [], S("d"), T(25));
        _engine.Write(batch, sync: false);

        Assert.Equal(new MvccGcStats(KeysScanned: 3, VersionsRemoved: 5), stats);
        Assert.Equal(["a@30", "a@20", "b@30", "c intent", "d@10"], Contents());
        Assert.Equal(("a20", T(20)), Read("a", 25));
        Assert.False(_store.Get(S("b"), T(25)).IsFound);
        Assert.Equal(("b30", T(30)), Read("b", 30));

        // Below every version nothing goes; far above, a live newest version stays and a deleted key vanishes.
        Assert.Equal(new MvccGcStats(2, 0), _store.GarbageCollect(new WriteBatch(), [], S("d"), T(5))); // c has only an intent
        var all = new WriteBatch();
        Assert.Equal(new MvccGcStats(3, 1), _store.GarbageCollect(all, [], null, T(100)));
        _engine.Write(all, sync: false);
        Assert.Equal(["a@30", "b@30", "c intent", "d@10"], Contents());
        Assert.Equal(new MvccGcStats(0, 0), _store.GarbageCollect(new WriteBatch(), S("z"), S("a"), T(100)));
    }

    [Fact]
    public void Writes_need_a_timestamp_and_corrupt_data_is_reported()
    {
        Assert.Throws<ArgumentException>(() => _store.Put(new WriteBatch(), S("k"), HlcTimestamp.Zero, S("v")));
        Assert.Throws<ArgumentException>(() => _store.Delete(new WriteBatch(), S("k"), HlcTimestamp.Zero));

        _engine.Write(new WriteBatch().Put(MvccKeys.VersionKey(S("k"), T(1)), [0x07]), sync: false);
        var error = Assert.Throws<FormatException>(() => _store.Get(S("k"), T(5)));
        Assert.Contains("corrupt MVCC version value", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Intents_round_trip_through_their_encoding()
    {
        var intent = Gen.Select(Gen.Byte.Array[16], Gen.Int[0, int.MaxValue], Gen.Long[0, long.MaxValue], Gen.Int[0, int.MaxValue], Gen.Frequency((3, Gen.Byte.Array[0, 20].Select(v => (byte[]?)v)), (1, Gen.Const((byte[]?)null))),
            (id, epoch, wall, logical, value) => new MvccIntent(new Guid(id), epoch, new HlcTimestamp(wall, logical), value));
        Seeds.ForSeeds(intent, 1000, salt: 9, i => Assert.Equal(i, MvccIntent.Decode(i.Encode())));

        var sample = new MvccIntent(TxnA, 3, new HlcTimestamp(0x0102, 4), [0xAB]);
        Assert.Equal("01" + "AAAAAAAA000000000000000000000001" + "00000003" + "0000000000000102" + "00000004" + "01" + "AB", Convert.ToHexString(sample.Encode()));
        Assert.Equal("01", Convert.ToHexString(new MvccIntent(TxnA, 0, T(1), []).Encode()[33..])); // empty value: kind 0x01, no bytes
        Assert.Equal("00", Convert.ToHexString(new MvccIntent(TxnA, 0, T(1), null).Encode()[33..])); // deletion: kind 0x00
        Assert.NotEqual(new MvccIntent(TxnA, 0, T(1), []), new MvccIntent(TxnA, 0, T(1), null));

        Assert.Throws<FormatException>(() => MvccIntent.Decode([]));
        Assert.Throws<FormatException>(() => MvccIntent.Decode(new byte[34])); // format byte 0
        var badKind = sample.Encode();
        badKind[33] = 0x05;
        Assert.Throws<FormatException>(() => MvccIntent.Decode(badKind));
        var deletionWithBytes = sample.Encode();
        deletionWithBytes[33] = 0x00;
        Assert.Throws<FormatException>(() => MvccIntent.Decode(deletionWithBytes));
        Assert.Throws<ArgumentOutOfRangeException>(() => new MvccIntent(TxnA, -1, T(1), null));
    }

    private static HlcTimestamp T(long wall) => new(wall, 0);

    private static string Str(byte[] bytes) => System.Text.Encoding.ASCII.GetString(bytes);

    private void Apply(Action<WriteBatch> write)
    {
        var batch = new WriteBatch();
        write(batch);
        _engine.Write(batch, sync: false);
    }

    private void Put(string key, long wall, string value) => Apply(b => _store.Put(b, S(key), T(wall), S(value)));

    private MvccWriteResult PutIntent(string key, MvccIntent intent)
    {
        var batch = new WriteBatch();
        var result = _store.PutIntent(batch, S(key), intent);
        _engine.Write(batch, sync: false);
        return result;
    }

    private MvccResolveOutcome Resolve(string key, MvccResolution resolution)
    {
        var batch = new WriteBatch();
        var outcome = _store.ResolveIntent(batch, S(key), resolution);
        _engine.Write(batch, sync: false);
        return outcome;
    }

    private (string Value, HlcTimestamp Ts) Read(string key, long readWall, long? uncertaintyWall = null)
    {
        var result = uncertaintyWall is { } u ? _store.GetWithUncertainty(S(key), T(readWall), T(u)) : _store.Get(S(key), T(readWall));
        Assert.True(result.IsFound, $"{key} at {readWall}: {result}");
        return (Str(result.Value!.Bytes), result.Value.Timestamp);
    }

    private List<string> Contents() =>
        _engine.Scan(MvccKeys.SpanStart, MvccKeys.SpanEnd)
            .Select(e => MvccKeys.Decode(e.Key))
            .Select(k => k.IsIntent ? $"{Str(k.UserKey)} intent" : $"{Str(k.UserKey)}@{k.Timestamp!.Value.WallNanos}")
            .ToList();
}
