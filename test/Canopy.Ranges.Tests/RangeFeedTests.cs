// The change feed of a range replica (src/Canopy.Ranges/RangeFeed.cs): versions decoded only once written, catch-up
// scans plus the buffer, resolved timestamps held below unresolved intents, restarts on another incarnation.
using Canopy.Clock;
using Canopy.Mvcc;
using Canopy.Storage;
using static Canopy.Ranges.Tests.Bytes;

namespace Canopy.Ranges.Tests;

public sealed class RangeFeedTests
{
    private static readonly DateTimeOffset Now = DateTimeOffset.UnixEpoch.AddDays(20000);

    private static Replica NewReplica(out Lease lease)
    {
        var r = Replica.Bootstrap(new RangeDescriptor(1, S("a"), S("z"), [1]));
        lease = new Lease(1, T(10), T(1_000_000), 0);
        Assert.Equal(ApplyResult.Applied, r.Lease(lease, 0));
        lease = r.Sm.Lease;
        return r;
    }

    /// <summary>Applies engine ops as the leaseholder's evaluation does (an eval command under the lease).</summary>
    private static void Eval(Replica r, Lease lease, Action<MvccStore, WriteBatch> build)
    {
        var batch = new WriteBatch();
        build(r.Sm.Mvcc, batch);
        Assert.Equal(ApplyResult.Applied, r.Apply(new RangeCommand.EvalCommand(lease.Sequence, RangeCommand.EvalCommand.FromBatch(batch))));
    }

    private static FeedRead Read(Replica r, HlcTimestamp from, string? cursor, HlcTimestamp bound, int limit = 100) =>
        r.Sm.Feed.Read(r.Engine, S("a"), S("z"), from, cursor, bound, limit, Now);

    [Fact]
    public void CatchUpThenBufferDeliverEveryVersionAboveTheStart()
    {
        var r = NewReplica(out var lease);
        Eval(r, lease, (m, b) => { m.Put(b, S("b1"), T(100), S("old")); m.Put(b, S("b2"), T(200), S("v2")); });
        r.Sm.Feed.Activate(r.Engine, S("a"), S("z"), Now);

        // Registration from 150: the catch-up finds b2@200 (not b1@100), without a resolved timestamp.
        var first = Read(r, T(150), null, T(300));
        Assert.Equal(FeedReadStatus.Ok, first.Status);
        Assert.Equal([("b2", T(200))], first.Events.Select(e => (System.Text.Encoding.ASCII.GetString(e.Key), e.Timestamp)));
        Assert.Null(first.Resolved);

        // Later writes come from the buffer, with the resolved timestamp given by the bound.
        Eval(r, lease, (m, b) => { m.Put(b, S("b3"), T(400), S("v3")); m.Delete(b, S("b1"), T(401)); });
        var next = Read(r, T(150), first.Cursor, T(500));
        Assert.Equal([("b3", T(400), "v3"), ("b1", T(401), "null")], next.Events.Select(e => (System.Text.Encoding.ASCII.GetString(e.Key), e.Timestamp, e.Value is null ? "null" : System.Text.Encoding.ASCII.GetString(e.Value))));
        Assert.Equal(T(500), next.Resolved);
        var empty = Read(r, T(150), next.Cursor, T(600));
        Assert.Empty(empty.Events);
        Assert.Equal(T(600), empty.Resolved);
    }

    [Fact]
    public void AnUnresolvedIntentHoldsTheResolvedTimestampBelowItUntilResolved()
    {
        var r = NewReplica(out var lease);
        r.Sm.Feed.Activate(r.Engine, S("a"), S("z"), Now);
        var cursor = Read(r, T(50), null, T(100)).Cursor;
        var txn = Guid.NewGuid();
        Eval(r, lease, (m, b) => m.PutIntent(b, S("c"), new MvccIntent(txn, 0, T(300), S("x"))));
        var held = Read(r, T(50), cursor, T(1000));
        Assert.Equal(T(300).Prev(), held.Resolved);
        Assert.Empty(held.Events); // an intent is not a change

        // Committed at 350: the version appears, the hold is gone.
        Eval(r, lease, (m, b) => m.ResolveIntent(b, S("c"), new MvccResolution(txn, 0, true, T(350))));
        var done = Read(r, T(50), held.Cursor, T(1000));
        Assert.Equal([T(350)], done.Events.Select(e => e.Timestamp));
        Assert.Equal(T(1000), done.Resolved);
    }

    [Fact]
    public void IntentsWrittenBeforeActivationAreFoundByItsScan()
    {
        var r = NewReplica(out var lease);
        Eval(r, lease, (m, b) => m.PutIntent(b, S("d"), new MvccIntent(Guid.NewGuid(), 0, T(250), S("x"))));
        r.Sm.Feed.Activate(r.Engine, S("a"), S("z"), Now);
        var first = Read(r, T(50), null, T(1000));
        var next = Read(r, T(50), first.Cursor, T(1000));
        Assert.Equal(T(250).Prev(), next.Resolved);
        Assert.Equal(T(250), r.Sm.Feed.OldestIntent(S("a"), S("z")));
        Assert.Null(r.Sm.Feed.OldestIntent(S("e"), S("z"))); // outside the intent's key: no hold
    }

    [Fact]
    public void ACursorOfAnotherIncarnationMustRestart()
    {
        var r = NewReplica(out _);
        r.Sm.Feed.Activate(r.Engine, S("a"), S("z"), Now);
        var first = Read(r, T(50), null, T(100));
        r.Sm.Feed.DeactivateIfIdle(Now.AddSeconds(1)); // nobody polled since Now: deactivated
        Assert.Equal(FeedReadStatus.Restart, Read(r, T(50), first.Cursor, T(100)).Status);
        r.Sm.Feed.Activate(r.Engine, S("a"), S("z"), Now);
        Assert.Equal(FeedReadStatus.Restart, Read(r, T(50), first.Cursor, T(100)).Status); // a new incarnation
        Assert.Equal(FeedReadStatus.Ok, Read(r, T(50), null, T(100)).Status);
        Assert.Equal(FeedReadStatus.Restart, Read(r, T(50), "garbage", T(100)).Status);
    }
}
