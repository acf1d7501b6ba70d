// Unit tests of RaftLog (follower append and conflicts, fast backtracking, compaction and membership history,
// stability after a truncation) and of the ConfState encoding.
using Canopy.Replication.Raft;

namespace Canopy.Replication.Tests.Raft;

public sealed class RaftLogTests
{
    private static readonly ConfState Three = new([1, 2, 3], []);

    private static Entry E(ulong index, ulong term, string data = "") => new(index, term, EntryType.Normal, RaftTestCluster.Cmd(data));

    private static Entry Conf(ulong index, ulong term, ConfState conf) => new(index, term, EntryType.ConfChange, conf.Encode());

    /// <summary>Snapshot (10, t5), then the given entries, all durable.</summary>
    private static RaftLog Log(ulong committed, params Entry[] entries) =>
        new(new SnapshotMeta(10, 5, Three), entries, committed, committed);

    private static List<(ulong, ulong)> Ids(RaftLog log) =>
        [.. Enumerable.Range((int)log.FirstIndex, (int)(log.LastIndex - log.Snapshot.Index)).Select(i => ((ulong)i, log.Term((ulong)i)!.Value))];

    [Fact]
    public void MaybeAppendRejectsAMismatchedPrevious()
    {
        var log = Log(11, E(11, 5), E(12, 5));
        Assert.Null(log.MaybeAppend(12, 6, 12, [E(13, 6)], false, out var v));
        Assert.Null(v);
        Assert.Null(log.MaybeAppend(14, 5, 12, [E(15, 6)], false, out _)); // past the end
        Assert.Equal(12UL, log.LastIndex);
        Assert.Equal(11UL, log.Committed);
    }

    [Fact]
    public void MaybeAppendTruncatesOnlyAtARealConflict()
    {
        var log = Log(11, E(11, 5), E(12, 5), E(13, 6), E(14, 6));

        // Already present: nothing changes, later entries stay; commit moves to min(leader commit, last new).
        Assert.Equal(12UL, log.MaybeAppend(11, 5, 14, [E(12, 5)], false, out var v1));
        Assert.Null(v1);
        Assert.Equal(14UL, log.LastIndex);
        Assert.Equal(12UL, log.Committed);

        // Conflict at 13: truncate from there and append the leader's entries.
        Assert.Equal(15UL, log.MaybeAppend(12, 5, 12, [E(13, 7), E(14, 7), E(15, 7)], false, out var v2));
        Assert.Null(v2);
        Assert.Equal([(11UL, 5UL), (12, 5), (13, 7), (14, 7), (15, 7)], Ids(log));
        Assert.Equal(12UL, log.Stable); // the replaced entries are no longer durable
        Assert.Equal(12UL, log.Committed);

        // Matching from the snapshot point: all present, nothing changes.
        Assert.Equal(12UL, log.MaybeAppend(10, 5, 12, [E(11, 5), E(12, 5)], false, out var v3));
        Assert.Null(v3);
        Assert.Equal(15UL, log.LastIndex);
    }

    [Fact]
    public void MaybeAppendReportsAConflictBelowTheCommitIndex()
    {
        var log = Log(13, E(11, 5), E(12, 5), E(13, 6));
        Assert.Null(log.MaybeAppend(11, 5, 13, [E(12, 7)], false, out var violation));
        Assert.NotNull(violation);
        Assert.Equal([(11UL, 5UL), (12, 5), (13, 6)], Ids(log));
    }

    [Fact]
    public void MaybeAppendWithTheTruncateBugDropsLaterEntries()
    {
        var log = Log(11, E(11, 5), E(12, 5), E(13, 6));
        Assert.Equal(12UL, log.MaybeAppend(11, 5, 11, [E(12, 5)], true, out _));
        Assert.Equal(12UL, log.LastIndex);
    }

    [Fact]
    public void FindConflictByTerm()
    {
        var log = Log(10, E(11, 5), E(12, 5), E(13, 6), E(14, 6), E(15, 8));
        Assert.Equal(15UL, log.FindConflictByTerm(15, 8));
        Assert.Equal(14UL, log.FindConflictByTerm(15, 7));
        Assert.Equal(14UL, log.FindConflictByTerm(15, 6));
        Assert.Equal(12UL, log.FindConflictByTerm(15, 5));
        Assert.Equal(10UL, log.FindConflictByTerm(15, 4)); // never below the snapshot
        Assert.Equal(15UL, log.FindConflictByTerm(30, 9)); // clamped to the last index
        Assert.Equal(12UL, log.FindConflictByTerm(12, 6));
    }

    [Fact]
    public void CompactKeepsTermAndMembershipAtTheCompactionPoint()
    {
        var withLearner = new ConfState([1, 2, 3], [4]);
        var four = new ConfState([1, 2, 3, 4], []);
        var log = new RaftLog(new SnapshotMeta(10, 5, Three), [E(11, 5), Conf(12, 5, withLearner), E(13, 6), Conf(14, 6, four), E(15, 6)], 13, 13);

        Assert.Equal(four, log.Conf);
        Assert.Equal(14UL, log.LastConfIndex);
        Assert.Equal(Three, log.ConfAt(11));
        Assert.Equal(withLearner, log.ConfAt(12));
        Assert.Equal(withLearner, log.ConfAt(13));
        Assert.Equal(four, log.ConfAt(15));

        Assert.Throws<InvalidOperationException>(() => log.Compact(14)); // beyond applied
        log.Compact(13);
        Assert.Equal(new SnapshotMeta(13, 6, withLearner), log.Snapshot);
        Assert.Equal(14UL, log.FirstIndex);
        Assert.Null(log.Term(12));
        Assert.Equal(6UL, log.Term(13));
        Assert.Equal(four, log.Conf);
        Assert.Equal(withLearner, log.ConfAt(13));
        Assert.Equal(four, log.ConfAt(14));

        log.Compact(12); // already compacted: no-op
        Assert.Equal(13UL, log.Snapshot.Index);

        // Truncating the last configuration entry reverts to the previous one.
        Assert.Equal(14UL, log.MaybeAppend(13, 6, 13, [E(14, 7)], false, out _));
        Assert.Equal(withLearner, log.Conf);
        Assert.Equal(0UL, log.LastConfIndex);
    }

    [Fact]
    public void StableToIgnoresAReplacedEntry()
    {
        var log = Log(11, E(11, 5), E(12, 5));
        log.Append(E(13, 6));
        log.Append(E(14, 6));
        Assert.Equal(12UL, log.Stable);
        Assert.Equal([13UL, 14], log.UnstableEntries().Select(e => e.Index));

        // A new leader replaces 14 before the write of (14, t6) completes.
        Assert.Equal(14UL, log.MaybeAppend(13, 6, 11, [E(14, 7)], false, out _));
        log.StableTo(14, 6); // the old write's completion must not mark (14, t7) durable
        Assert.Equal(12UL, log.Stable);
        Assert.Equal([13UL, 14], log.UnstableEntries().Select(e => e.Index));

        log.StableTo(14, 7);
        Assert.Equal(14UL, log.Stable);
        Assert.Empty(log.UnstableEntries());
    }

    [Fact]
    public void RestoreIgnoresASnapshotAtOrBelowTheCommitIndex()
    {
        var log = Log(12, E(11, 5), E(12, 5), E(13, 6));
        var old = new Snapshot(new SnapshotMeta(12, 5, Three), new byte[] { 1 });
        Assert.False(log.Restore(old));
        Assert.Equal(10UL, log.Snapshot.Index);
        Assert.Null(log.PendingSnapshot);

        // Newer and matching the log: only the commit index moves.
        Assert.False(log.Restore(new Snapshot(new SnapshotMeta(13, 6, Three), new byte[] { 2 })));
        Assert.Equal(13UL, log.Committed);
        Assert.Equal(10UL, log.Snapshot.Index);

        // Newer and not in the log: replaces it.
        var fresh = new Snapshot(new SnapshotMeta(20, 7, Three), new byte[] { 3 });
        Assert.True(log.Restore(fresh));
        Assert.Equal((20UL, 20UL, 20UL, 20UL), (log.LastIndex, log.Committed, log.Applied, log.Stable));
        Assert.Same(fresh, log.PendingSnapshot);
        log.SnapshotPersisted(20);
        Assert.Null(log.PendingSnapshot);
    }

    // ------------------------------------------------------------------ ConfState encoding

    [Fact]
    public void ConfStateRoundTrips()
    {
        var random = new Random(42);
        var cases = new List<ConfState> { ConfState.Empty, Three, new([7], [1, 2]), new([ulong.MaxValue, 0], [1UL << 40]) };
        for (var i = 0; i < 200; i++)
        {
            var voters = Enumerable.Range(0, random.Next(6)).Select(_ => (ulong)random.NextInt64());
            var learners = Enumerable.Range(0, random.Next(4)).Select(_ => (ulong)random.Next(10));
            cases.Add(new ConfState(voters, learners));
        }

        foreach (var conf in cases)
        {
            var bytes = conf.Encode();
            Assert.Equal(8 + (8 * (conf.Voters.Length + conf.Learners.Length)), bytes.Length);
            var back = ConfState.Decode(bytes);
            Assert.Equal(conf, back);
            Assert.Equal(conf.Voters, back.Voters);
            Assert.Equal(conf.Learners, back.Learners);
        }

        // Learners that are also voters are dropped; order and duplicates do not matter.
        var messy = new ConfState([3, 1, 2, 1], [2, 5, 5]);
        Assert.Equal([1UL, 2, 3], messy.Voters);
        Assert.Equal([5UL], messy.Learners);
    }

    [Fact]
    public void ConfStateDecodeRejectsMalformedBytes()
    {
        var valid = new ConfState([1, 2], [3]).Encode();
        Assert.Throws<FormatException>(() => ConfState.Decode([]));
        Assert.Throws<FormatException>(() => ConfState.Decode(valid.AsSpan(0, 7)));
        for (var cut = 8; cut < valid.Length; cut++)
        {
            var n = cut;
            Assert.Throws<FormatException>(() => ConfState.Decode(valid.AsSpan(0, n)));
        }

        Assert.Throws<FormatException>(() => ConfState.Decode([.. valid, 0]));
        Assert.Throws<FormatException>(() => ConfState.Decode(Header(-1, 0)));
        Assert.Throws<FormatException>(() => ConfState.Decode(Header(0, -1)));
        Assert.Throws<FormatException>(() => ConfState.Decode(Header(1025, 0)));
        Assert.Throws<FormatException>(() => ConfState.Decode(Header(int.MaxValue, int.MaxValue)));
        Assert.Throws<FormatException>(() => ConfState.Decode(Header(int.MinValue, 0)));

        // Random bytes: either a configuration or FormatException, nothing else.
        var random = new Random(7);
        for (var i = 0; i < 2000; i++)
        {
            var bytes = new byte[random.Next(0, 40)];
            random.NextBytes(bytes);
            if (bytes.Length >= 8 && random.Next(2) == 0)
            {
                // Plausible counts, so some inputs get past the length check.
                bytes[0] = (byte)random.Next(4);
                bytes[1] = bytes[2] = bytes[3] = 0;
                bytes[4] = (byte)random.Next(4);
                bytes[5] = bytes[6] = bytes[7] = 0;
            }

            try
            {
                _ = ConfState.Decode(bytes);
            }
            catch (FormatException)
            {
            }
        }
    }

    private static byte[] Header(int voters, int learners)
    {
        var b = new byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(b, voters);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(4), learners);
        return b;
    }
}
