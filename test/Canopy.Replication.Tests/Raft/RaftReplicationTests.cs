// Log replication: commit and catch-up, stale appends (pitfall 4), the figure-8 commit rule (pitfall 2),
// heartbeat commit indexes (pitfall 16) and snapshots for followers behind a compacted log (pitfall 7).
using Canopy.Replication.Raft;

namespace Canopy.Replication.Tests.Raft;

public sealed class RaftReplicationTests
{
    [Fact]
    public void EntriesReplicateAndCommitAndALaggingFollowerCatchesUp()
    {
        var c = new RaftTestCluster(3);
        Assert.True(c.Elect(1));
        var r = c.Propose(1, "a");
        Assert.True(r.Ok);
        Assert.Equal((12UL, c.Node(1).Term), (r.Index, r.Term));
        Assert.Equal(11UL, c.Node(1).Committed); // not committed before a quorum has it
        c.Deliver();
        foreach (var id in c.Ids)
        {
            Assert.Equal(12UL, c.Node(id).Committed);
            Assert.Equal(["a"], c.Payloads(id));
        }

        c.Isolate(3);
        foreach (var cmd in new[] { "b", "c", "d" })
        {
            Assert.True(c.Propose(1, cmd).Ok);
        }

        c.Deliver();
        Assert.Equal(15UL, c.Node(1).Committed); // leader and node 2 are a quorum
        Assert.Equal(["a", "b", "c", "d"], c.Payloads(2));
        Assert.Equal(12UL, c.Node(3).LastIndex);

        c.Heal();
        c.TickAll(4); // a heartbeat round shows the leader that node 3 is behind
        Assert.Equal(15UL, c.Node(3).Committed);
        Assert.Equal(["a", "b", "c", "d"], c.Payloads(3));
        Assert.Equal(RaftElectionTests.Describe(c.AppliedEntries(1)), RaftElectionTests.Describe(c.AppliedEntries(3)));
        Assert.Equal(15UL, c.DiskOf(3).Entries[^1].Index);
        Assert.Empty(c.AppliedConflicts);
    }

    // ------------------------------------------------------------------ pitfall 4: truncate only on a real conflict

    [Fact]
    public void StaleAppendDoesNotTruncateLaterEntries()
    {
        var node2 = RunStaleAppend(RaftBugs.None);
        Assert.Equal(14UL, node2.LastIndex);
        Assert.Equal("c", Payload(node2.EntryAt(14)));
    }

    [Fact]
    public void TruncateOnStaleAppend_LosesLaterEntries()
    {
        var node2 = RunStaleAppend(new RaftBugs { TruncateOnStaleAppend = true });
        Assert.Equal(13UL, node2.LastIndex);
        Assert.Null(node2.EntryAt(14));
    }

    /// <summary>
    /// Node 2 receives b (13) then c (14) while it cannot tell the leader (so its commit stays at 12); then the append
    /// that carried b arrives again. Returns node 2.
    /// </summary>
    private static RaftNode RunStaleAppend(RaftBugs bugs)
    {
        var c = new RaftTestCluster(3, cfg => cfg with { Bugs = bugs });
        Assert.True(c.Elect(1));
        Assert.True(c.Propose(1, "a").Ok);
        c.Deliver();
        Assert.Equal(12UL, c.Node(2).Committed);

        c.Isolate(3);
        c.Drop(2, 1);
        Assert.True(c.Propose(1, "b").Ok);
        c.Deliver();
        var stale = c.Sent.Last(m => m.Type == MessageType.Append && m.To == 2 && m.Entries.Length > 0);
        Assert.Equal("b", Payload(stale.Entries[^1]));
        Assert.True(c.Propose(1, "c").Ok);
        c.Deliver();

        var node2 = c.Node(2);
        Assert.Equal((14UL, 12UL), (node2.LastIndex, node2.Committed));
        c.Inject(stale);
        return node2;
    }

    // ------------------------------------------------------------------ pitfall 5: match never moves back

    [Fact]
    public void DuplicatedOldAcknowledgementDoesNotMoveMatchBack()
    {
        var (match, matchAfter) = RunDuplicatedAck(RaftBugs.None);
        Assert.Equal(match, matchAfter);
    }

    [Fact]
    public void MatchFollowsStaleResponse_MovesMatchBack()
    {
        var (match, matchAfter) = RunDuplicatedAck(new RaftBugs { MatchFollowsStaleResponse = true });
        Assert.True(matchAfter < match, $"match {match} -> {matchAfter}");
    }

    /// <summary>Node 2 acknowledged a (12), then b and c (14); its first acknowledgement arrives again. Returns node 2's match before and after.</summary>
    private static (ulong Before, ulong After) RunDuplicatedAck(RaftBugs bugs)
    {
        var c = new RaftTestCluster(3, cfg => cfg with { Bugs = bugs });
        Assert.True(c.Elect(1));
        Assert.True(c.Propose(1, "a").Ok);
        c.Deliver();
        var oldAck = c.Sent.Last(m => m.Type == MessageType.AppendResp && m.From == 2 && !m.Reject && m.Index == 12);
        Assert.True(c.Propose(1, "b").Ok);
        Assert.True(c.Propose(1, "c").Ok);
        c.Deliver();
        var before = c.Node(1).ProgressOf(2)!.Value.Match;
        Assert.Equal(14UL, before);
        c.Inject(oldAck);
        return (before, c.Node(1).ProgressOf(2)!.Value.Match);
    }

    // ------------------------------------------------------------------ pitfall 2: figure 8

    [Fact]
    public void Figure8_OldTermEntryOnAMajorityIsNotCommittedByCounting()
    {
        var c = Figure8UpToOldTermOnMajority(RaftBugs.None);
        var s1 = c.Node(1);
        Assert.Equal(11UL, s1.Committed);

        // Once an entry of term 8 reaches a majority, both commit together.
        c.Heal();
        c.Isolate(5);
        c.Tick(1, 2); // a heartbeat: the followers' answers make S1 resend 13
        Assert.Equal(13UL, s1.Committed);
        Assert.Equal(["X"], c.Payloads(1));
        Assert.DoesNotContain(c.Readies, r => r.Id == 1 && r.Ready.HardState is { Commit: 12 });
        Assert.Empty(c.AppliedConflicts);
    }

    [Fact]
    public void Figure8_NoCommittedEntryIsLost()
    {
        var (lost, conflicts) = RunFigure8(RaftBugs.None);
        Assert.Empty(lost);
        Assert.Empty(conflicts);
    }

    [Fact]
    public void CommitPriorTermByCount_LosesACommittedEntry()
    {
        var (lost, conflicts) = RunFigure8(new RaftBugs { CommitPriorTermByCount = true });
        Assert.NotEmpty(lost);
        Assert.NotEmpty(conflicts);
    }

    /// <summary>
    /// Raft paper figure 8 on five nodes (one entry per message, scripted elections):
    /// (a) S1 leads term 6 and appends X at (12, t6) while cut off; (b) S5 wins term 7 with S2..S4 and appends its
    /// no-op at (12, t7), which reaches nobody, then restarts; (c) S1 restarts and wins term 8 with S2..S4: X reaches
    /// S2..S4 (a majority) but S1's no-op (13, t8) reaches nobody.
    /// </summary>
    private static RaftTestCluster Figure8UpToOldTermOnMajority(RaftBugs bugs)
    {
        var c = new RaftTestCluster(5, cfg => cfg with { PreVote = false, CheckQuorum = false, MaxMessageBytes = 1, Bugs = bugs });

        // (a)
        Assert.True(c.Elect(1));
        Assert.Equal(11UL, c.Node(1).Committed);
        Assert.All(c.Ids, id => Assert.Equal((11UL, 6UL), (c.Node(id).LastIndex, c.Node(id).LastTerm)));
        c.Isolate(1);
        Assert.True(c.Propose(1, "X").Ok);
        c.Deliver();
        Assert.Equal((12UL, 6UL), (c.Node(1).LastIndex, c.Node(1).LastTerm));

        // (b)
        c.Heal();
        c.Isolate(1);
        c.DropWhere(m => m.From == 5 && m.Type == MessageType.Append);
        Assert.True(c.Elect(5));
        Assert.Equal((12UL, 7UL), (c.Node(5).LastIndex, c.Node(5).LastTerm));
        c.Crash(5);

        // (c)
        c.Heal();
        c.Isolate(5);
        c.Crash(1);
        Assert.False(c.Elect(1)); // term 7: S2..S4 voted for S5
        // S1's term-8 entries never land on another server; a probe the follower rejects anyway may pass.
        c.DropWhere(m => m.Type == MessageType.Append && m.From == 1 && m.Entries.Any(e => e.Term == 8) && c.Node(m.To).TermAt(m.Index) == m.LogTerm);
        Assert.True(c.Elect(1));
        Assert.Equal(8UL, c.Node(1).Term);
        Assert.Equal(13UL, c.Node(1).LastIndex);
        foreach (var id in new ulong[] { 2, 3, 4 })
        {
            Assert.Equal((12UL, 6UL), (c.Node(id).LastIndex, c.Node(id).LastTerm));
        }

        return c;
    }

    /// <summary>
    /// Figure 8 to the end: (d) S1 is cut off; S5 (last term 7) wins term 9 with S2..S4 and overwrites index 12.
    /// Returns the entries some node applied that the final leader does not hold, and state-machine conflicts.
    /// </summary>
    private static (List<string> Lost, List<string> Conflicts) RunFigure8(RaftBugs bugs)
    {
        var c = Figure8UpToOldTermOnMajority(bugs);
        var committedX = c.Node(1).Committed >= 12;
        Assert.Equal(bugs.CommitPriorTermByCount, committedX);

        // (d)
        c.Heal();
        c.Isolate(1);
        Assert.False(c.Elect(5)); // term 8: S2..S4 voted for S1
        Assert.True(c.Elect(5)); // term 9
        Assert.Equal(9UL, c.Node(5).Term);
        foreach (var id in new ulong[] { 2, 3, 4, 5 })
        {
            Assert.Equal(13UL, c.Node(id).Committed);
            Assert.Equal(7UL, c.Node(id).TermAt(12));
        }

        return (c.LostCommittedEntries(5), c.AppliedConflicts);
    }

    // ------------------------------------------------------------------ pitfall 16: heartbeats carry min(commit, match)

    [Fact]
    public void HeartbeatDoesNotCommitADivergentTail()
    {
        var c = RunDivergentFollowerOnHeartbeats(RaftBugs.None);
        Assert.Equal(11UL, c.Node(1).Committed);
        Assert.Empty(c.Payloads(1));
        Assert.Empty(c.AppliedConflicts);
    }

    [Fact]
    public void HeartbeatFullCommit_CommitsADivergentTail()
    {
        var c = RunDivergentFollowerOnHeartbeats(new RaftBugs { HeartbeatFullCommit = true });
        Assert.Equal(13UL, c.Node(1).Committed);
        Assert.Equal(["a", "b"], c.Payloads(1));
        Assert.NotEmpty(c.AppliedConflicts);
    }

    /// <summary>
    /// Node 1 (term 6) appends a, b at 12..13 while cut off; node 2 leads term 7 and commits up to 14. Node 1 restarts
    /// and hears only node 2's heartbeats (appends to it are lost) for a few election timeouts.
    /// </summary>
    private static RaftTestCluster RunDivergentFollowerOnHeartbeats(RaftBugs bugs)
    {
        var c = new RaftTestCluster(3, cfg => cfg with { CheckQuorum = false, QuiesceAfterHeartbeats = 0, Bugs = bugs });
        Assert.True(c.Elect(1));
        c.Isolate(1);
        Assert.True(c.Propose(1, "a").Ok);
        Assert.True(c.Propose(1, "b").Ok);
        c.Deliver();

        Assert.True(c.Elect(2));
        Assert.True(c.Propose(2, "x").Ok);
        Assert.True(c.Propose(2, "y").Ok);
        c.Deliver();
        Assert.Equal(14UL, c.Node(2).Committed);

        c.Crash(1);
        c.Heal();
        c.DropWhere(m => m.From == 2 && m.To == 1 && m.Type == MessageType.Append);
        c.TickAll(30);
        Assert.Equal((7UL, 2UL), (c.Node(1).Term, c.Node(1).Leader));
        Assert.Contains(c.Sent, m => m.Type == MessageType.Heartbeat && m.To == 1 && m.Term == 7);
        return c;
    }

    // ------------------------------------------------------------------ pitfall 7: snapshots

    [Fact]
    public void FollowerBehindACompactedLogGetsASnapshotAndIgnoresAStaleOne()
    {
        var c = new RaftTestCluster(3, cfg => cfg with { QuiesceAfterHeartbeats = 0 });
        Assert.True(c.Elect(1));
        c.TickAll(2);
        c.Isolate(3);
        for (var i = 0; i < 20; i++)
        {
            Assert.True(c.Propose(1, $"p{i}").Ok);
            c.Deliver();
        }

        var leader = c.Node(1);
        Assert.Equal(31UL, leader.Applied);
        var meta = c.Compact(1, leader.Applied);
        Assert.Equal((31UL, 32UL), (meta.Index, leader.FirstIndex));
        Assert.Equal(meta, c.DiskOf(1).SnapshotMeta);
        Assert.Empty(c.DiskOf(1).Entries);
        Assert.True(c.Node(3).LastIndex < meta.Index);

        c.Heal();
        c.TickAll(4);
        var snapMsg = Assert.Single(c.Sent, m => m.Type == MessageType.InstallSnapshot && m.To == 3);
        var snapIndex = snapMsg.Snapshot!.Meta.Index;
        Assert.True(snapIndex >= meta.Index);
        Assert.Equal(snapIndex, c.Node(3).CompactedTo.Index);
        Assert.Equal(snapIndex, c.DiskOf(3).SnapshotMeta.Index);
        Assert.Contains(c.Readies, r => r.Id == 3 && r.Ready.Snapshot is not null);
        Assert.Equal(c.Payloads(1), c.Payloads(3));

        // Entries continue after the snapshot.
        Assert.True(c.Propose(1, "after").Ok);
        c.Deliver();
        Assert.Equal(c.Payloads(1), c.Payloads(3));
        Assert.Equal("after", c.Payloads(3)[^1]);
        Assert.Equal(leader.Applied, c.Node(3).Applied);

        // The same snapshot again, now older than node 3's commit index: ignored.
        var node3 = c.Node(3);
        Assert.True(snapIndex < node3.Committed);
        var before = (node3.Committed, node3.Applied, node3.LastIndex, node3.CompactedTo, c.Payloads(3).Count);
        var readies = c.Readies.Count;
        c.Inject(snapMsg);
        Assert.Equal(before, (node3.Committed, node3.Applied, node3.LastIndex, node3.CompactedTo, c.Payloads(3).Count));
        Assert.DoesNotContain(c.Readies.Skip(readies), r => r.Id == 3 && r.Ready.Snapshot is not null);
        Assert.Empty(c.AppliedConflicts);

        // And the snapshot survives a restart: the state machine restarts from it and re-applies the rest.
        c.Crash(3);
        c.Deliver();
        Assert.Equal(c.Payloads(1), c.Payloads(3));
    }

    private static string? Payload(Entry? e) => e is { } x ? System.Text.Encoding.UTF8.GetString(x.Data.Span) : null;
}
