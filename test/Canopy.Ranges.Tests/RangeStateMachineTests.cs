// RangeStateMachine on a MemoryEngine: the lease rules, writes under a lease sequence, the span check, snapshots
// (Capture → Install elsewhere gives the same MVCC state), the applied index (persisted with each command's effects,
// reloaded on open, atomic with them under a crash), and undecodable commands (they do nothing).
using Canopy.Clock;
using Canopy.Mvcc;
using Canopy.Replication.Raft;
using Canopy.Storage;
using CsCheck;
using static Canopy.Ranges.Tests.Bytes;

namespace Canopy.Ranges.Tests;

public sealed class RangeStateMachineTests
{
    private static readonly RangeDescriptor Span = new(7, S("b"), S("m"), [1, 2, 3]);

    // ------------------------------------------------------------------ leases

    [Fact]
    public void A_new_replica_has_no_lease_and_the_first_lease_gets_sequence_one()
    {
        var r = Replica.Bootstrap(Span);
        Assert.Equal(Lease.None, r.Sm.Lease);
        Assert.Equal(10UL, r.Sm.Applied);

        Assert.Equal(ApplyResult.Applied, r.Lease(new Lease(1, T(100), T(200), 0), previousSequence: 0));
        Assert.Equal(new Lease(1, T(100), T(200), 1), r.Sm.Lease);
    }

    [Fact]
    public void A_lease_is_served_only_once_the_batch_it_was_applied_in_is_written()
    {
        var r = Replica.Bootstrap(Span);
        var batch = new WriteBatch();
        var cmd = new RangeCommand.LeaseCommand(new Lease(1, T(100), T(200), 0), 0, false);
        r.Sm.Apply(new Entry(11, 2, EntryType.Normal, cmd.Encode()), batch);

        // Applied (apply-time checks use it) but not written: a reader must not serve under it yet, or it could miss
        // the writes applied just before it in the same batch.
        Assert.Equal(Lease.None, r.Sm.Lease);
        r.Engine.Write(batch, sync: false);
        r.Sm.Written();
        Assert.Equal(new Lease(1, T(100), T(200), 1), r.Sm.Lease);
    }

    [Fact]
    public void An_extension_by_the_holder_keeps_the_sequence_and_the_start_and_never_shortens()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0)); // sequence 1

        // Longer: extended; the start and the sequence stay (the request's own start and sequence are ignored).
        Assert.Equal(ApplyResult.Applied, r.Lease(new Lease(1, T(150), T(300), 99), previousSequence: 1));
        Assert.Equal(new Lease(1, T(100), T(300), 1), r.Sm.Lease);

        // Shorter: accepted, but the expiration stays where it was.
        Assert.Equal(ApplyResult.Applied, r.Lease(new Lease(1, T(160), T(250), 1), previousSequence: 1));
        Assert.Equal(new Lease(1, T(100), T(300), 1), r.Sm.Lease);

        // Starting exactly at the expiration still extends.
        Assert.Equal(ApplyResult.Applied, r.Lease(new Lease(1, T(300), T(350), 1), previousSequence: 1));
        Assert.Equal(new Lease(1, T(100), T(350), 1), r.Sm.Lease);
    }

    [Fact]
    public void The_same_holder_starting_after_its_lease_expired_gets_a_new_lease()
    {
        // Not a revival of the old lease (a restarted server must not serve under the lease it held before): a new
        // start and the next sequence, so writes evaluated under the old one do nothing.
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        Assert.Equal(ApplyResult.Applied, r.Lease(new Lease(1, T(201), T(600), 1), previousSequence: 1));
        Assert.Equal(new Lease(1, T(201), T(600), 2), r.Sm.Lease);
        Assert.Equal(ApplyResult.LeaseChanged, r.Put(1, "c", "under the old lease", T(150)));
        Assert.Equal(ApplyResult.Applied, r.Put(2, "c", "under the new one", T(250)));
    }

    [Fact]
    public void A_new_holder_before_the_expiration_is_refused()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        var before = r.Sm.Lease;

        foreach (var start in new[] { T(50), T(150), T(199, 5), T(200) })
        {
            Assert.Equal(ApplyResult.LeaseChanged, r.Lease(new Lease(2, start, T(500), 0), previousSequence: 1));
            Assert.Equal(ApplyResult.LeaseChanged, r.Sm.TakeResult(r.Sm.Applied));
            Assert.Equal(before, r.Sm.Lease);
        }

        r.Reopen();
        Assert.Equal(before, r.Sm.Lease);
    }

    [Fact]
    public void A_new_holder_after_the_expiration_is_accepted_with_the_next_sequence()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));

        Assert.Equal(ApplyResult.Applied, r.Lease(new Lease(2, T(200, 1), T(400), 0), previousSequence: 1));
        Assert.Equal(new Lease(2, T(200, 1), T(400), 2), r.Sm.Lease);
        Assert.Equal(ApplyResult.Applied, r.Sm.TakeResult(r.Sm.Applied));

        // And back to the first holder later: sequence 3.
        Assert.Equal(ApplyResult.Applied, r.Lease(new Lease(1, T(401), T(600), 0), previousSequence: 2));
        Assert.Equal(new Lease(1, T(401), T(600), 3), r.Sm.Lease);
    }

    [Fact]
    public void A_request_naming_a_stale_previous_sequence_is_refused()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        Assert.Equal(ApplyResult.Applied, r.Lease(new Lease(2, T(300), T(400), 0), previousSequence: 1)); // sequence 2
        var current = r.Sm.Lease;

        // The old holder's extension, made before it saw the change: void (it must not extend holder 2's lease).
        Assert.Equal(ApplyResult.LeaseChanged, r.Lease(new Lease(1, T(100), T(900), 1), previousSequence: 1));
        Assert.Equal(current, r.Sm.Lease);

        // A takeover decided on the old lease, even one that would be valid now: void.
        Assert.Equal(ApplyResult.LeaseChanged, r.Lease(new Lease(3, T(500), T(900), 0), previousSequence: 1));
        Assert.Equal(current, r.Sm.Lease);

        // A transfer decided on the old lease: void.
        Assert.Equal(ApplyResult.LeaseChanged, r.Lease(new Lease(3, T(350), T(900), 0), previousSequence: 1, transfer: true));
        Assert.Equal(current, r.Sm.Lease);

        // A sequence from the future: void too.
        Assert.Equal(ApplyResult.LeaseChanged, r.Lease(new Lease(2, T(300), T(900), 0), previousSequence: 3));
        Assert.Equal(current, r.Sm.Lease);
    }

    [Fact]
    public void Transfers_are_refused_for_now_and_leave_the_lease_and_its_writes_alone()
    {
        // A transfer cannot be checked at apply to come from the holder (it does not name its proposer), and nothing
        // proposes one: every transfer is Rejected, whoever it names, and changes nothing.
        var none = Replica.Bootstrap(Span);
        Assert.Equal(ApplyResult.Rejected, none.Lease(new Lease(2, T(150), T(400), 0), previousSequence: 0, transfer: true));
        Assert.Equal(ApplyResult.Rejected, none.Sm.TakeResult(none.Sm.Applied));
        Assert.Equal(Lease.None, none.Sm.Lease);

        var r = WithLease(new Lease(1, T(100), T(1000), 0));
        Assert.Equal(ApplyResult.Applied, r.Put(1, "c", "under-1", T(120)));
        var before = r.Sm.Lease;
        foreach (var (holder, start) in new (ulong, long)[] { (2, 150), (2, 100), (2, 99), (1, 150), (3, 2000) })
        {
            Assert.Equal(ApplyResult.Rejected, r.Lease(new Lease(holder, T(start), T(start + 300), 0), previousSequence: 1, transfer: true));
            Assert.Equal(before, r.Sm.Lease);
        }

        Assert.Equal(ApplyResult.Applied, r.Put(1, "d", "still under 1", T(160)));
        Assert.Equal("still under 1", r.Read("d", HlcTimestamp.MaxValue));
        Assert.Equal("under-1", r.Read("c", HlcTimestamp.MaxValue));
    }

    [Fact]
    public void Malformed_lease_requests_are_refused()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        var before = r.Sm.Lease;
        Assert.Equal(ApplyResult.LeaseChanged, r.Lease(new Lease(0, T(300), T(400), 0), previousSequence: 1)); // no holder
        Assert.Equal(ApplyResult.LeaseChanged, r.Lease(new Lease(2, T(300), T(300), 0), previousSequence: 1)); // empty
        Assert.Equal(ApplyResult.LeaseChanged, r.Lease(new Lease(2, T(300), T(250), 0), previousSequence: 1)); // backwards
        Assert.Equal(ApplyResult.LeaseChanged, r.Lease(new Lease(1, T(300), T(250), 0), previousSequence: 1)); // holder, backwards
        Assert.Equal(before, r.Sm.Lease);
    }

    [Fact]
    public void The_lease_is_persisted_with_the_command_and_reloaded()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        r.Lease(new Lease(2, T(201), T(400), 0), previousSequence: 1);
        r.Lease(new Lease(2, T(201), T(500), 2), previousSequence: 2);
        var lease = r.Sm.Lease;
        r.Reopen();
        Assert.Equal(lease, r.Sm.Lease);
        Assert.Equal(new Lease(2, T(201), T(500), 2), lease);
    }

    [Fact]
    public void Lease_rules_hold_for_random_request_sequences()
    {
        // Against a model written from docs/ranges.md: only the listed transitions ever happen, two holders never
        // share a sequence, and a sequence's holder never changes.
        var gen = Gen.Select(Gen.ULong[0, 3], Gen.Long[0, 40], Gen.Long[-5, 30], Gen.ULong[0, 4], Gen.Bool, (holder, start, len, prev, transfer) => (holder, start, len, prev, transfer)).Array[1, 30];
        gen.Sample(steps =>
        {
            var r = Replica.Bootstrap(Span);
            var holderOf = new Dictionary<ulong, ulong>();
            foreach (var (holder, start, len, prev, transfer) in steps)
            {
                var cur = r.Sm.Lease;
                var req = new Lease(holder, T(start * 10), T(Math.Max(0, (start + len) * 10)), 0);
                var result = r.Lease(req, prev, transfer);
                var next = r.Sm.Lease;

                var valid = prev == cur.Sequence && holder != 0 && req.Expiration > req.Start;
                Lease? expected;
                if (!valid)
                {
                    expected = null;
                }
                else if (transfer)
                {
                    expected = null; // refused for now
                }
                else if (cur.Holder == holder && req.Start <= cur.Expiration)
                {
                    expected = cur with { Expiration = HlcTimestamp.Max(cur.Expiration, req.Expiration) };
                }
                else
                {
                    expected = req.Start > cur.Expiration ? req with { Sequence = cur.Sequence + 1 } : null;
                }

                Assert.Equal(expected ?? cur, next);
                if (expected is null)
                {
                    Assert.NotEqual(ApplyResult.Applied, result);
                }
                else
                {
                    Assert.Equal(ApplyResult.Applied, result);
                }

                Assert.True(next.Sequence == cur.Sequence || next.Sequence == cur.Sequence + 1);
                Assert.True(next.Sequence != cur.Sequence || next.Expiration >= cur.Expiration, "the same lease got shorter");
                if (next.Holder != 0)
                {
                    // A sequence number names one holder, ever.
                    Assert.Equal(next.Holder, holderOf.TryAdd(next.Sequence, next.Holder) ? next.Holder : holderOf[next.Sequence]);
                }
            }

            var final = r.Sm.Lease;
            r.Reopen();
            Assert.Equal(final, r.Sm.Lease);
        }, iter: 2_000);
    }

    // ------------------------------------------------------------------ writes

    [Fact]
    public void A_write_under_the_lease_in_force_applies_and_is_visible_at_its_timestamp()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        Assert.Equal(ApplyResult.Applied, r.Put(1, "c", "v1", T(110)));
        Assert.Equal(ApplyResult.Applied, r.Sm.TakeResult(r.Sm.Applied));
        Assert.Equal(ApplyResult.Applied, r.Apply(new RangeCommand.WriteCommand(1, [new MvccWrite(S("c"), T(120), null), new MvccWrite(S("d"), T(120), S("v2"))])));

        Assert.Null(r.Read("c", T(109)));
        Assert.Equal("v1", r.Read("c", T(119)));
        Assert.Null(r.Read("c", T(120))); // deleted at 120
        Assert.Equal("v2", r.Read("d", T(120)));
    }

    [Fact]
    public void A_write_evaluated_under_an_older_lease_sequence_does_nothing()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        Assert.Equal(ApplyResult.Applied, r.Lease(new Lease(2, T(201), T(400), 0), previousSequence: 1)); // sequence 2
        var before = r.Dump(MvccKeys.SpanStart, MvccKeys.SpanEnd);

        Assert.Equal(ApplyResult.LeaseChanged, r.Put(1, "c", "deposed", T(150)));
        Assert.Equal(ApplyResult.LeaseChanged, r.Sm.TakeResult(r.Sm.Applied));
        Assert.Equal(ApplyResult.Applied, r.Sm.TakeResult(r.Sm.Applied)); // taken once
        Assert.Equal(ApplyResult.LeaseChanged, r.Put(3, "c", "future", T(250)));
        Assert.Equal(ApplyResult.LeaseChanged, r.Put(0, "c", "none", T(250)));

        Assert.Equal(before, r.Dump(MvccKeys.SpanStart, MvccKeys.SpanEnd));
        Assert.Null(r.Read("c", HlcTimestamp.MaxValue));
        Assert.Equal(ApplyResult.Applied, r.Put(2, "c", "current", T(250)));
        Assert.Equal("current", r.Read("c", HlcTimestamp.MaxValue));
    }

    [Fact]
    public void Keys_outside_the_span_are_rejected_and_nothing_of_the_command_is_written()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        var before = r.Dump(MvccKeys.SpanStart, MvccKeys.SpanEnd);
        foreach (var key in new[] { "a", "az", "m", "m0", "z", "\u0001" })
        {
            Assert.Equal(ApplyResult.Rejected, r.Put(1, key, "x", T(110)));
            Assert.Equal(ApplyResult.Rejected, r.Sm.TakeResult(r.Sm.Applied));
        }

        // One key out of span: the keys in the span are not written either.
        var mixed = new RangeCommand.WriteCommand(1, [new MvccWrite(S("c"), T(110), S("in")), new MvccWrite(S("n"), T(110), S("out"))]);
        Assert.Equal(ApplyResult.Rejected, r.Apply(mixed));
        Assert.Equal(before, r.Dump(MvccKeys.SpanStart, MvccKeys.SpanEnd));

        // Writes MVCC could not store (a key over the limit, timestamp zero) are rejected here, never by throwing
        // while applying (that would repeat on every replica at this entry and stop the range).
        Assert.Equal(ApplyResult.Rejected, r.Apply(new RangeCommand.WriteCommand(1, [new MvccWrite([.. S("c"), .. new byte[MvccKeys.MaxUserKeyLength]], T(110), S("x"))])));
        Assert.Equal(ApplyResult.Rejected, r.Apply(new RangeCommand.WriteCommand(1, [new MvccWrite(S("c"), HlcTimestamp.Zero, S("x"))])));
        Assert.Equal(before, r.Dump(MvccKeys.SpanStart, MvccKeys.SpanEnd));

        // The bounds: the start key is in, the last key before the end is in.
        Assert.Equal(ApplyResult.Applied, r.Put(1, "b", "first", T(120)));
        Assert.Equal(ApplyResult.Applied, r.Put(1, "lzzz", "last", T(120)));
        Assert.Equal("first", r.Read("b", T(120)));
        Assert.Equal("last", r.Read("lzzz", T(120)));
    }

    [Fact]
    public void An_uninitialised_replica_applies_no_write()
    {
        var r = new Replica(7);
        Assert.Null(r.Sm.Descriptor);
        Assert.Equal(ApplyResult.LeaseChanged, r.Put(0, "c", "x", T(1)));
        Assert.Empty(r.Dump(MvccKeys.SpanStart, MvccKeys.SpanEnd));
    }

    // ------------------------------------------------------------------ snapshots

    [Fact]
    public void A_snapshot_installed_on_another_engine_gives_the_same_reads_lease_and_descriptor()
    {
        var source = WithLease(new Lease(2, T(100), T(10_000), 0));
        var timestamps = new List<HlcTimestamp>();
        for (var i = 0; i < 40; i++)
        {
            var ts = T(200 + (i * 10), i % 3);
            timestamps.Add(ts);
            var key = $"c{i % 7}";
            var cmd = i % 5 == 4
                ? new RangeCommand.WriteCommand(1, [new MvccWrite(S(key), ts, null)])
                : new RangeCommand.WriteCommand(1, [new MvccWrite(S(key), ts, S($"v{i}")), new MvccWrite(S($"d{i}"), ts, [])]);
            Assert.Equal(ApplyResult.Applied, source.Apply(cmd));
        }

        // Data of another range sharing the engine (outside this span) must not travel.
        source.Engine.Write(new WriteBatch().Put(MvccKeys.VersionKey(S("x"), T(5)), [1, 2, 3]), sync: false);

        var (index, data) = source.Sm.Capture();
        Assert.Equal(source.Sm.Applied, index);

        // The target has stale data inside the span and another range's data outside it.
        var target = Replica.Bootstrap(Span, index: 3);
        var stale = new WriteBatch().Put(MvccKeys.VersionKey(S("c1"), T(999_999)), [9]).Put(MvccKeys.VersionKey(S("zz"), T(5)), [7]);
        target.Engine.Write(stale, sync: false);
        target.Install(new Snapshot(new SnapshotMeta(index, 4, new ConfState([1, 2, 3], [])), data));

        Assert.Equal(index, target.Sm.Applied);
        Assert.Equal(source.Sm.Lease, target.Sm.Lease);
        Assert.Equal(source.Sm.Descriptor!.Encode(), target.Sm.Descriptor!.Encode());
        var (lo, hi) = MvccKeys.Span(Span.StartKey, Span.EndKey);
        Assert.Equal(source.Dump(lo, hi), target.Dump(lo, hi));
        Assert.NotNull(target.Engine.Get(MvccKeys.VersionKey(S("zz"), T(5))));
        Assert.Null(target.Engine.Get(MvccKeys.VersionKey(S("x"), T(5))));

        foreach (var key in Enumerable.Range(0, 7).Select(i => $"c{i}").Concat(Enumerable.Range(0, 40).Select(i => $"d{i}")))
        {
            foreach (var ts in timestamps.Append(T(1)).Append(HlcTimestamp.MaxValue))
            {
                Assert.Equal(source.Read(key, ts), target.Read(key, ts));
            }
        }

        // Reopened from its engine, the target is the same; and it goes on applying like the source.
        target.Reopen();
        Assert.Equal(index, target.Sm.Applied);
        Assert.Equal(source.Sm.Lease, target.Sm.Lease);
        Assert.Equal(source.Put(1, "c0", "after", T(5000)), target.Put(1, "c0", "after", T(5000)));
        Assert.Equal("after", target.Read("c0", HlcTimestamp.MaxValue));
    }

    [Fact]
    public void Installing_a_snapshot_with_another_span_removes_the_old_spans_data()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        r.Put(1, "c", "old", T(110));
        r.Put(1, "k", "old", T(110));

        var narrower = Replica.Bootstrap(new RangeDescriptor(7, S("h"), S("p"), [1, 2, 3]), index: 50);
        narrower.Lease(new Lease(3, T(300), T(400), 0), previousSequence: 0);
        narrower.Put(1, "o", "new", T(310));
        var (index, data) = narrower.Sm.Capture();

        r.Install(new Snapshot(new SnapshotMeta(index, 9, new ConfState([1, 2, 3], [])), data));
        Assert.Null(r.Read("c", HlcTimestamp.MaxValue)); // in the old span only: gone
        Assert.Null(r.Read("k", HlcTimestamp.MaxValue)); // in both spans, not in the snapshot: gone
        Assert.Equal("new", r.Read("o", HlcTimestamp.MaxValue));
        Assert.Equal(S("h"), r.Sm.Descriptor!.StartKey);
        Assert.Equal(narrower.Sm.Lease, r.Sm.Lease);
    }

    [Fact]
    public void Random_histories_survive_capture_and_install()
    {
        var write = Gen.Select(Gen.Int[0, 12], Gen.Long[1, 60], Gen.Int[0, 2], Gen.Int[-1, 3], (k, w, l, v) => (k, w, l, v));
        var history = write.Array[1, 5].Array[0, 25];
        history.Sample(commands =>
        {
            var source = WithLease(new Lease(1, T(1), T(1_000_000), 0));
            foreach (var c in commands)
            {
                var writes = c.Select(x => new MvccWrite(S($"c{x.k:D2}"), T(x.w * 10, x.l), x.v < 0 ? null : S($"v{x.v}"))).ToArray();
                source.Apply(new RangeCommand.WriteCommand(1, writes));
            }

            var (index, data) = source.Sm.Capture();
            var target = new Replica(7);
            target.Install(new Snapshot(new SnapshotMeta(index, 3, new ConfState([1, 2, 3], [])), data));
            for (var k = 0; k <= 12; k++)
            {
                for (long w = 0; w <= 610; w += 5)
                {
                    Assert.Equal(source.Read($"c{k:D2}", T(w, 1)), target.Read($"c{k:D2}", T(w, 1)));
                }
            }

            var scanAt = T(700);
            var a = source.Sm.Mvcc.Scan(Span.StartKey, Span.EndKey, scanAt, 1000).Rows.Select(x => $"{Hex(x.Key)}={Hex(x.Value)}@{x.Timestamp}");
            var b = target.Sm.Mvcc.Scan(Span.StartKey, Span.EndKey, scanAt, 1000).Rows.Select(x => $"{Hex(x.Key)}={Hex(x.Value)}@{x.Timestamp}");
            Assert.Equal(a, b);
        }, iter: 300);
    }

    [Fact]
    public void Capturing_an_uninitialised_replica_fails()
    {
        Assert.Throws<InvalidOperationException>(() => new Replica(7).Sm.Capture());
    }

    // ------------------------------------------------------------------ applied index

    [Fact]
    public void The_applied_index_is_persisted_with_every_entry_and_reloaded()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0)); // applied 11
        r.ApplyRaw(ReadOnlyMemory<byte>.Empty); // a new leader's no-op
        r.ApplyRaw(new ConfState([1, 2, 3], [4]).Encode(), EntryType.ConfChange);
        r.Put(1, "c", "v", T(110));
        r.Put(1, "zz", "out of span", T(110)); // rejected, but applied as an entry
        r.Put(9, "c", "stale", T(110));         // lease changed, idem
        r.ApplyRaw(new byte[] { 0x7F, 1, 2 });  // undecodable, idem
        Assert.Equal(17UL, r.Sm.Applied);

        var lease = r.Sm.Lease;
        r.Reopen();
        Assert.Equal(17UL, r.Sm.Applied);
        Assert.Equal(lease, r.Sm.Lease);
        Assert.Equal(Span.Encode(), r.Sm.Descriptor!.Encode());
        Assert.Equal("v", r.Read("c", HlcTimestamp.MaxValue));

        // A snapshot's index becomes the applied index, persisted too.
        var (index, data) = r.Sm.Capture();
        var other = new Replica(7);
        other.Install(new Snapshot(new SnapshotMeta(index + 100, 5, new ConfState([1], [])), data));
        other.Reopen();
        Assert.Equal(index + 100, other.Sm.Applied);
    }

    [Fact]
    public void After_a_crash_the_applied_index_matches_the_data_exactly()
    {
        // Each command's effects and the applied index share one batch: a crash that loses a suffix of unsynced
        // batches leaves the reloaded applied index naming exactly the last command whose effects survived.
        for (var seed = 0; seed < 200; seed++)
        {
            var engine = new MemoryEngine();
            var r = WithLease(new Lease(1, T(100), T(1000), 0), engine);
            engine.Sync();
            var first = r.Sm.Applied + 1;
            var n = 1 + (seed % 12);
            for (var i = 0; i < n; i++)
            {
                r.Put(1, $"c{i:D2}", $"v{i}", T(200 + i));
            }

            engine.Crash(new Random(seed));
            r.Reopen();
            var applied = r.Sm.Applied;
            Assert.InRange(applied, first - 1, first - 1 + (ulong)n);
            for (var i = 0; i < n; i++)
            {
                var expected = first + (ulong)i <= applied ? $"v{i}" : null;
                Assert.Equal(expected, r.Read($"c{i:D2}", HlcTimestamp.MaxValue));
            }
        }
    }

    // ------------------------------------------------------------------ undecodable commands

    [Fact]
    public void Undecodable_commands_advance_the_applied_index_and_do_nothing_else()
    {
        var r = WithLease(new Lease(1, T(100), T(200), 0));
        r.Put(1, "c", "v", T(110));
        var valid = new RangeCommand.WriteCommand(1, [new MvccWrite(S("d"), T(120), S("w"))]).Encode();
        var lease = new RangeCommand.LeaseCommand(new Lease(2, T(300), T(400), 0), 1, false).Encode();
        var random = new Random(7);
        var hostile = (byte[])valid.Clone();
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(hostile.AsSpan(17), int.MaxValue); // the key's length
        var inputs = new List<byte[]> { new byte[] { 0 }, new byte[] { 3 }, new byte[] { 0xFF, 0xFF }, valid[..^1], valid[..9], lease[..^1], lease[..1], hostile };
        for (var i = 0; i < 500; i++)
        {
            var garbage = new byte[random.Next(1, 64)];
            random.NextBytes(garbage);
            inputs.Add(garbage);
        }

        foreach (var input in inputs)
        {
            RangeCommand? decoded = null;
            try
            {
                decoded = RangeCommand.Decode(input);
            }
            catch (FormatException)
            {
            }

            if (decoded is not null)
            {
                continue; // random bytes that happen to decode are a real command: not this test's subject
            }

            var before = r.Dump();
            var leaseBefore = r.Sm.Lease;
            var index = r.Sm.Applied + 1;
            Assert.Equal(ApplyResult.Rejected, r.ApplyRaw(input));
            Assert.Equal(ApplyResult.Rejected, r.Sm.TakeResult(index)); // what the proposer is told
            Assert.Equal(index, r.Sm.Applied);
            Assert.Equal(leaseBefore, r.Sm.Lease);
            var after = r.Dump();
            var appliedKey = $"{Hex(RangeKeys.AppliedState(7))}=";
            Assert.Equal(before.Where(x => !x.StartsWith(appliedKey, StringComparison.Ordinal)), after.Where(x => !x.StartsWith(appliedKey, StringComparison.Ordinal)));
        }

        Assert.Equal("v", r.Read("c", HlcTimestamp.MaxValue));
        Assert.Null(r.Read("d", HlcTimestamp.MaxValue));
    }

    // ------------------------------------------------------------------ helpers

    private static Replica WithLease(Lease lease, MemoryEngine? engine = null)
    {
        var r = Replica.Bootstrap(Span, engine: engine);
        Assert.Equal(ApplyResult.Applied, r.Lease(lease, previousSequence: 0));
        return r;
    }
}
