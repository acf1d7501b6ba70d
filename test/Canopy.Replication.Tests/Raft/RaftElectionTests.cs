// Elections: leader election and the no-op, the persistence rule for votes and acknowledgements (pitfall 1),
// the up-to-date vote rule (pitfall 3), pre-vote (pitfall 10) and check-quorum (pitfall 11).
// Each planted-bug switch that breaks one of these rules is shown to be caught by the same test.
using Canopy.Replication.Raft;

namespace Canopy.Replication.Tests.Raft;

public sealed class RaftElectionTests
{
    private const int ElectionTicks = 10;

    [Fact]
    public void OneLeaderIsElectedAndCommitsANoOpOfItsTerm()
    {
        var c = new RaftTestCluster(3);
        Assert.True(c.TickUntil(() => c.Leader() != 0, 100), "no leader after 100 ticks");
        c.TickAll(5);

        var leaderId = Assert.Single(c.Leaders());
        var leader = c.Node(leaderId);
        Assert.True(leader.Term > RaftTestCluster.BootTerm);

        var noop = leader.EntryAt(RaftTestCluster.BootIndex + 1);
        Assert.NotNull(noop);
        Assert.Equal(leader.Term, noop.Value.Term);
        Assert.Equal(EntryType.Normal, noop.Value.Type);
        Assert.Equal(0, noop.Value.Data.Length);

        foreach (var id in c.Ids)
        {
            var n = c.Node(id);
            Assert.Equal(leader.Term, n.Term);
            Assert.Equal(leaderId, n.Leader);
            Assert.True(n.Committed >= noop.Value.Index, $"node {id} did not commit the no-op");
        }

        foreach (var cmd in new[] { "a", "b", "c" })
        {
            Assert.True(c.Propose(leaderId, cmd).Ok);
        }

        c.Deliver();
        var expected = Describe(c.AppliedEntries(leaderId));
        Assert.Equal(4, expected.Count); // the no-op and a, b, c
        foreach (var id in c.Ids)
        {
            Assert.Equal(expected, Describe(c.AppliedEntries(id)));
            Assert.Equal(["a", "b", "c"], c.Payloads(id));
        }

        Assert.Empty(c.AppliedConflicts);
    }

    // ------------------------------------------------------------------ pitfall 1: persist before you answer

    [Fact]
    public void AcknowledgementsAndVotesWaitForPersistence()
    {
        var (readies, c) = RunElectionAndAppend(RaftBugs.None);
        Assert.Empty(PersistenceViolations(readies));

        // The scenario exercised every kind of message the rule is about (the test is not vacuous).
        var after = readies.SelectMany(r => r.Ready.MessagesAfterPersist).ToList();
        var now = readies.SelectMany(r => r.Ready.MessagesNow).ToList();
        Assert.Contains(after, m => m.Type == MessageType.Vote);
        Assert.Contains(after, m => m.Type == MessageType.VoteResp && !m.Reject);
        Assert.Contains(after, m => m.Type == MessageType.AppendResp && !m.Reject);
        Assert.Contains(now, m => m.Type == MessageType.PreVote);
        Assert.Contains(now, m => m.Type == MessageType.Append);

        foreach (var (id, rd) in readies)
        {
            // A vote request promises the candidate's own vote: that Ready persists it.
            if (rd.MessagesAfterPersist.Any(m => m.Type == MessageType.Vote))
            {
                Assert.True(rd.HardState is { } hs && hs.Vote == id && hs.Term == rd.Term, $"node {id}: vote requests without its own vote persisted");
            }

            // A vote grant is persisted in the Ready that carries it.
            foreach (var grant in rd.MessagesAfterPersist.Where(m => m.Type == MessageType.VoteResp && !m.Reject))
            {
                Assert.True(rd.HardState is { } hs && hs.Vote == grant.To && hs.Term == grant.Term, $"node {id}: grant to {grant.To} without the vote persisted");
            }
        }

        // A follower's acknowledgement of new entries travels with those entries' write.
        Assert.Contains(readies, r => r.Ready.Entries.Length > 0 && r.Ready.MessagesAfterPersist.Any(m => m.Type == MessageType.AppendResp && !m.Reject && m.Index == r.Ready.Entries[^1].Index));
        Assert.Empty(c.AppliedConflicts);
    }

    [Fact]
    public void AckBeforePersist_IsDetected()
    {
        var (readies, _) = RunElectionAndAppend(new RaftBugs { AckBeforePersist = true });
        var violations = PersistenceViolations(readies);
        Assert.Contains(violations, v => v.Contains(nameof(MessageType.AppendResp), StringComparison.Ordinal));
        Assert.Contains(violations, v => v.Contains(nameof(MessageType.VoteResp), StringComparison.Ordinal));
        Assert.Contains(violations, v => v.Contains($" {nameof(MessageType.Vote)} ", StringComparison.Ordinal));
    }

    [Fact]
    public void LeaderCountsItsOwnEntryOnlyOnceDurable()
    {
        var c = new RaftTestCluster(1);
        Assert.True(c.Elect(1));
        var leader = c.Node(1);
        var r = c.Propose(1, "a");
        Assert.True(leader.Committed < r.Index, "committed before the leader's own write was durable");
        Assert.True(leader.StableIndex < r.Index);
        c.Deliver();
        Assert.Equal(r.Index, leader.Committed);
        Assert.Equal(["a"], c.Payloads(1));
    }

    [Fact]
    public void LeaderCountsUnsynced_CommitsBeforeTheWrite()
    {
        var c = new RaftTestCluster(1, cfg => cfg with { Bugs = new RaftBugs { LeaderCountsUnsynced = true } });
        Assert.True(c.Elect(1));
        var r = c.Propose(1, "a");
        Assert.Equal(r.Index, c.Node(1).Committed);
    }

    private static (List<(ulong Id, Ready Ready)> Readies, RaftTestCluster Cluster) RunElectionAndAppend(RaftBugs bugs)
    {
        var c = new RaftTestCluster(3, cfg => cfg with { Bugs = bugs });
        Assert.True(c.Elect(1));
        Assert.True(c.Propose(1, "a").Ok);
        c.Deliver();
        Assert.Equal(["a"], c.Payloads(2));
        return (c.Readies, c);
    }

    /// <summary>Messages that left before the write they promise: acks and votes in MessagesNow, pre-votes held back.</summary>
    private static List<string> PersistenceViolations(IEnumerable<(ulong Id, Ready Ready)> readies)
    {
        var violations = new List<string>();
        foreach (var (id, rd) in readies)
        {
            foreach (var m in rd.MessagesNow.Where(m => m.Type is MessageType.AppendResp or MessageType.VoteResp or MessageType.Vote))
            {
                violations.Add($"node {id}: {m.Type} in MessagesNow: {m}");
            }

            foreach (var m in rd.MessagesAfterPersist.Where(m => m.Type is MessageType.PreVote))
            {
                violations.Add($"node {id}: {m.Type} held for persistence: {m}");
            }
        }

        return violations;
    }

    // ------------------------------------------------------------------ pitfall 3: vote only for an up-to-date log

    [Fact]
    public void LongerLogOfOlderTermDoesNotWinTheVote()
    {
        var (c, oldLeaderWon) = RunLongerStaleLogCampaign(RaftBugs.None);
        Assert.False(oldLeaderWon);
        Assert.NotEqual(1UL, c.Node(3).Vote);
        Assert.Empty(c.LostCommittedEntries(c.Leader()));
    }

    [Fact]
    public void VoteComparesIndexOnly_ElectsALeaderWithoutACommittedEntry()
    {
        var (c, oldLeaderWon) = RunLongerStaleLogCampaign(new RaftBugs { VoteComparesIndexOnly = true });
        Assert.True(oldLeaderWon);
        Assert.Equal(1UL, c.Node(3).Vote);

        // Leader completeness is broken: (12, t7) was committed and applied by 2 and 3, the new leader has (12, t6).
        Assert.NotEmpty(c.LostCommittedEntries(1));
    }

    /// <summary>
    /// Node 1 leads term 6 and appends a, b, c (12..14 at term 6) while cut off. Node 2 wins term 7 with node 3 and
    /// commits its no-op (12, t7). Node 1 restarts and campaigns with only node 3 reachable: its log is longer
    /// (14) but its last term (6) is older than node 3's (7). Returns whether node 1 became leader.
    /// </summary>
    private static (RaftTestCluster Cluster, bool OldLeaderWon) RunLongerStaleLogCampaign(RaftBugs bugs)
    {
        var c = new RaftTestCluster(3, cfg => cfg with { PreVote = false, CheckQuorum = false, Bugs = bugs });
        Assert.True(c.Elect(1));
        c.Isolate(1);
        foreach (var cmd in new[] { "a", "b", "c" })
        {
            Assert.True(c.Propose(1, cmd).Ok);
        }

        c.Deliver();
        Assert.True(c.Elect(2));
        Assert.Equal(7UL, c.Node(2).Term);
        Assert.Equal(12UL, c.Node(3).Committed);
        Assert.Equal(7UL, c.Node(3).TermAt(12));

        c.Crash(1);
        c.Heal();
        c.Isolate(2);
        c.DropWhere(m => m.From == 1 && m.Type == MessageType.Append); // what a wrongly elected leader would send is not the point
        Assert.Equal((14UL, 6UL), (c.Node(1).LastIndex, c.Node(1).LastTerm));
        Assert.Equal((12UL, 7UL), (c.Node(3).LastIndex, c.Node(3).LastTerm));

        c.Node(1).Campaign(); // term 7: node 3 already voted for 2
        c.Deliver();
        c.Node(1).Campaign(); // term 8: node 3 judges the logs
        c.Deliver();
        Assert.Equal(8UL, c.Node(3).Term);
        return (c, c.Node(1).Role == RaftRole.Leader);
    }

    // ------------------------------------------------------------------ pitfall 10: pre-vote

    [Theory]
    [InlineData(0)] // quiescence off: the leader heartbeats throughout
    [InlineData(2)] // quiescence on: the idle leader and follower 2 go quiet while 3 is away
    public void RejoiningFollowerDoesNotDisruptTheLeader(int quiesceAfterHeartbeats)
    {
        var (c, term, _) = RunPartitionedFollower(RaftBugs.None, quiesceAfterHeartbeats);
        Assert.Equal(1UL, c.Leader());
        foreach (var id in c.Ids)
        {
            Assert.Equal(term, c.Node(id).Term);
            Assert.Equal(1UL, c.Node(id).Leader);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void PreVoteRaisesTerm_DisruptsTheLeaderOnRejoin(int quiesceAfterHeartbeats)
    {
        var (c, term, isolatedTerm) = RunPartitionedFollower(new RaftBugs { PreVoteRaisesTerm = true }, quiesceAfterHeartbeats);
        Assert.True(isolatedTerm > term + 3, $"the isolated node stayed at term {isolatedTerm}");
        Assert.True(c.Node(1).Term > term, "the leader's term did not change");
        Assert.False(c.Leader() == 1 && c.Node(1).Term == term);
    }

    /// <summary>Isolates follower 3 (before the group can quiesce) for 10 election timeouts, heals, ticks 3 more. Returns the term before and node 3's term while cut off.</summary>
    private static (RaftTestCluster Cluster, ulong Term, ulong IsolatedTerm) RunPartitionedFollower(RaftBugs bugs, int quiesceAfterHeartbeats)
    {
        var c = new RaftTestCluster(3, cfg => cfg with { QuiesceAfterHeartbeats = quiesceAfterHeartbeats, Bugs = bugs });
        Assert.True(c.Elect(1));
        c.TickAll(2);
        var term = c.Node(1).Term;

        c.Isolate(3);
        c.TickAll(10 * ElectionTicks);
        Assert.Equal(1UL, c.Leader());
        Assert.Equal(quiesceAfterHeartbeats > 0, c.Node(1).IsQuiesced && c.Node(2).IsQuiesced);
        var isolatedTerm = c.Node(3).Term;
        if (!bugs.Any)
        {
            Assert.Equal(term, isolatedTerm); // pre-campaigns raise no term
            Assert.Contains(c.Sent, m => m.From == 3 && m.Type == MessageType.PreVote);
        }

        c.Heal();
        c.TickAll(3 * ElectionTicks);
        return (c, term, isolatedTerm);
    }

    // ------------------------------------------------------------------ pitfall 11: check-quorum

    [Fact]
    public void IsolatedLeaderStepsDownWithinTwoElectionTimeouts()
    {
        var c = RunIsolatedLeader(RaftBugs.None);
        Assert.NotEqual(RaftRole.Leader, c.Node(1).Role);

        // The majority side elected a leader of its own.
        Assert.True(c.TickUntil(() => c.Leader() is 2 or 3, 10 * ElectionTicks));
    }

    [Fact]
    public void NoCheckQuorum_IsolatedLeaderKeepsLeading()
    {
        var c = RunIsolatedLeader(new RaftBugs { NoCheckQuorum = true });
        Assert.Equal(RaftRole.Leader, c.Node(1).Role);
        c.TickAll(10 * ElectionTicks);
        Assert.Equal(RaftRole.Leader, c.Node(1).Role);
    }

    private static RaftTestCluster RunIsolatedLeader(RaftBugs bugs)
    {
        var c = new RaftTestCluster(3, cfg => cfg with { QuiesceAfterHeartbeats = 0, Bugs = bugs });
        Assert.True(c.Elect(1));
        c.TickAll(3);
        c.Isolate(1);
        c.Tick(1, 2 * ElectionTicks);
        return c;
    }

    internal static List<(ulong Index, ulong Term, EntryType Type, string Data)> Describe(IEnumerable<Entry> entries) =>
        [.. entries.Select(e => (e.Index, e.Term, e.Type, Convert.ToHexString(e.Data.Span)))];
}
