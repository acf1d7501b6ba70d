// Membership changes one server at a time (pitfall 8) and leadership transfer (pitfall 9).
using Canopy.Replication.Raft;

namespace Canopy.Replication.Tests.Raft;

public sealed class RaftMembershipTests
{
    private const int ElectionTicks = 10;

    [Fact]
    public void ConfChangeWaitsForACommittedEntryOfTheTermAndForThePreviousChange()
    {
        var c = new RaftTestCluster(3, cfg => cfg with { CheckQuorum = false });
        c.DropWhere(m => m.From == 1 && m.Type == MessageType.Append);
        Assert.True(c.Elect(1));
        var leader = c.Node(1);
        Assert.Equal(10UL, leader.Committed); // its no-op (11) reached nobody

        var early = leader.ProposeConfChange(ConfChangeType.AddLearner, 4);
        Assert.Equal(ProposeStatus.ConfChangeRejected, early.Status);
        Assert.Equal(3, leader.Conf.All.Count());

        c.Heal();
        c.Tick(1, 2); // heartbeat: the followers' answers make the leader resend the no-op
        Assert.Equal(11UL, leader.Committed);

        var first = leader.ProposeConfChange(ConfChangeType.AddLearner, 4);
        Assert.True(first.Ok, first.Reason);
        Assert.True(leader.Conf.IsLearner(4)); // in force when appended, not when committed
        var second = leader.ProposeConfChange(ConfChangeType.AddLearner, 5);
        Assert.Equal(ProposeStatus.ConfChangeRejected, second.Status);
        Assert.False(leader.Conf.Contains(5));

        c.Deliver();
        Assert.True(leader.Committed >= first.Index);
        Assert.True(leader.ProposeConfChange(ConfChangeType.AddLearner, 5).Ok);
        c.Deliver();

        // Changes that do not apply to the configuration are refused.
        Assert.Equal(ProposeStatus.ConfChangeRejected, leader.ProposeConfChange(ConfChangeType.PromoteLearner, 2).Status);
        Assert.Equal(ProposeStatus.ConfChangeRejected, leader.ProposeConfChange(ConfChangeType.AddLearner, 5).Status);
        Assert.Equal(ProposeStatus.ConfChangeRejected, leader.ProposeConfChange(ConfChangeType.Remove, 9).Status);

        // A follower cannot propose.
        Assert.Equal(ProposeStatus.NotLeader, c.Node(2).ProposeConfChange(ConfChangeType.AddLearner, 6).Status);
    }

    [Fact]
    public void LearnersGetTheLogButNeverCampaignAndCountOnlyOncePromoted()
    {
        var c = LeaderWithTwoLearners(RaftBugs.None);
        var leader = c.Node(1);

        // Learners are not counted: leader + two learners hold the entry, but only one voter of three.
        c.Isolate(2);
        c.Isolate(3);
        var r = c.Propose(1, "q");
        c.Deliver();
        Assert.Equal(r.Index, c.Node(4).LastIndex);
        Assert.Equal(r.Index, c.Node(5).LastIndex);
        Assert.True(leader.Committed < r.Index, "an entry held by one voter and two learners was committed");

        c.Heal();
        c.TickAll(4);
        Assert.Equal(r.Index, leader.Committed);
        Assert.Equal(["p", "q"], c.Payloads(4));

        // Promote 4: now four voters, quorum three.
        var promote = leader.ProposeConfChange(ConfChangeType.PromoteLearner, 4);
        Assert.True(promote.Ok, promote.Reason);
        c.Deliver();
        Assert.Equal([1UL, 2, 3, 4], leader.Conf.Voters);
        Assert.True(c.Node(4).IsPromotable);

        c.Isolate(3);
        c.Isolate(4);
        var s = c.Propose(1, "s");
        c.Deliver();
        Assert.True(leader.Committed < s.Index, "two of four voters committed an entry");

        c.Heal();
        c.Isolate(3);
        c.TickAll(4); // 1, 2 and the promoted 4 are a quorum
        Assert.Equal(s.Index, leader.Committed);
        Assert.Empty(c.AppliedConflicts);
    }

    [Fact]
    public void CountLearners_CommitsWithoutAVoterQuorum()
    {
        var c = LeaderWithTwoLearners(new RaftBugs { CountLearners = true });
        c.Isolate(2);
        c.Isolate(3);
        var r = c.Propose(1, "q");
        c.Deliver();
        Assert.Equal(r.Index, c.Node(1).Committed);
    }

    [Fact]
    public void LearnerNeverCampaigns()
    {
        var c = LeaderWithTwoLearners(RaftBugs.None);
        c.Isolate(1);
        c.TickAll(20 * ElectionTicks);
        Assert.DoesNotContain(c.Sent, m => m.From is 4 or 5 && m.Type is MessageType.PreVote or MessageType.Vote);
        Assert.All(new ulong[] { 4, 5 }, id => Assert.Equal(RaftRole.Follower, c.Node(id).Role));
        Assert.True(c.Leader() is 2 or 3); // the voters did elect someone, and the learners follow it
        Assert.Equal(c.Leader(), c.Node(4).Leader);
    }

    /// <summary>Voters 1..3 led by 1, learners 4 and 5 added one at a time and caught up (via a snapshot), "p" applied everywhere.</summary>
    private static RaftTestCluster LeaderWithTwoLearners(RaftBugs bugs)
    {
        var c = new RaftTestCluster(3, cfg => cfg with { CheckQuorum = false, QuiesceAfterHeartbeats = 0, Bugs = bugs });
        Assert.True(c.Elect(1));
        var leader = c.Node(1);
        foreach (ulong id in new ulong[] { 4, 5 })
        {
            c.AddNode(id);
            var r = leader.ProposeConfChange(ConfChangeType.AddLearner, id);
            Assert.True(r.Ok, r.Reason);
            c.Deliver();
            Assert.True(leader.Committed >= r.Index);
        }

        Assert.True(c.Propose(1, "p").Ok);
        c.Deliver();
        c.TickAll(4);
        Assert.Equal([4UL, 5], leader.Conf.Learners);
        foreach (var id in c.Ids)
        {
            Assert.Equal(leader.LastIndex, c.Node(id).LastIndex);
            Assert.Equal(["p"], c.Payloads(id));
        }

        Assert.False(c.Node(4).IsPromotable);
        Assert.Contains(c.Sent, m => m.Type == MessageType.InstallSnapshot && m.To == 4);
        return c;
    }

    [Fact]
    public void RemovedLeaderStepsDownOnceTheRemovalCommits()
    {
        var c = new RaftTestCluster(3);
        Assert.True(c.Elect(1));
        c.TickAll(2);
        var old = c.Node(1);
        var r = old.ProposeConfChange(ConfChangeType.Remove, 1);
        Assert.True(r.Ok, r.Reason);
        Assert.False(old.Conf.IsVoter(1));
        Assert.Equal(RaftRole.Leader, old.Role); // keeps leading until the removal commits

        c.Deliver();
        Assert.NotEqual(RaftRole.Leader, old.Role);
        var next = c.Leader();
        Assert.True(next is 2 or 3, $"leader after removal: {next}");
        Assert.True(c.Node(next).Committed >= r.Index);
        Assert.Equal([2UL, 3], c.Node(next).Conf.Voters);

        Assert.True(c.Propose(next, "after").Ok);
        c.Deliver();
        Assert.Equal(["after"], c.Payloads(2));
        Assert.Equal(["after"], c.Payloads(3));

        // The removed server never campaigns.
        var sent = c.Sent.Count;
        c.TickAll(10 * ElectionTicks);
        Assert.DoesNotContain(c.Sent.Skip(sent), m => m.From == 1 && m.Type is MessageType.PreVote or MessageType.Vote);
        Assert.Equal(next, c.Leader());
    }

    // ------------------------------------------------------------------ pitfall 9: leadership transfer

    [Fact]
    public void TransferRefusesProposalsThenHandsOver()
    {
        var c = new RaftTestCluster(3);
        Assert.True(c.Elect(1));
        c.TickAll(2);
        var term = c.Node(1).Term;
        Assert.True(c.Node(1).TransferLeadership(2));
        var refused = c.Propose(1, "x");
        Assert.Equal(ProposeStatus.TransferInProgress, refused.Status);
        Assert.Equal(2UL, refused.LeaderHint);

        c.Deliver();
        Assert.Equal(2UL, c.Leader());
        Assert.Equal(RaftRole.Follower, c.Node(1).Role);
        Assert.Equal(term + 1, c.Node(2).Term);
        Assert.True(c.Propose(2, "y").Ok);
        c.Deliver();
        Assert.All(c.Ids, id => Assert.Equal(["y"], c.Payloads(id)));
    }

    [Fact]
    public void TransferToALaggingTargetCatchesItUpFirst()
    {
        var c = new RaftTestCluster(3);
        Assert.True(c.Elect(1));
        c.Drop(1, 3);
        Assert.True(c.Propose(1, "a").Ok);
        c.Deliver();
        Assert.True(c.Node(3).LastIndex < c.Node(1).LastIndex);

        Assert.True(c.Node(1).TransferLeadership(3));
        c.Heal();
        c.Deliver();
        c.TickAll(2); // the heartbeat answer makes the leader resend what 3 lacks; then TimeoutNow
        Assert.Equal(3UL, c.Leader());
        var timeoutNow = c.Sent.Single(m => m.Type == MessageType.TimeoutNow);
        var appendsTo3 = c.Sent.Where(m => m.Type == MessageType.Append && m.To == 3 && m.Entries.Length > 0).ToList();
        Assert.True(c.Sent.IndexOf(timeoutNow) > c.Sent.IndexOf(appendsTo3[^1]), "TimeoutNow before the target was caught up");
        Assert.Equal(["a"], c.Payloads(3));
    }

    [Fact]
    public void TransferToATargetThatCannotCatchUpIsAbandonedAfterAnElectionTimeout()
    {
        var c = new RaftTestCluster(3);
        Assert.True(c.Elect(1));
        c.TickAll(2);
        c.Isolate(3);
        Assert.True(c.Propose(1, "a").Ok);
        c.Deliver();

        Assert.True(c.Node(1).TransferLeadership(3));
        c.Deliver();
        Assert.Equal(3UL, c.Node(1).LeadTransferee);
        c.Tick(1, ElectionTicks - 1);
        Assert.Equal(ProposeStatus.TransferInProgress, c.Propose(1, "refused").Status);

        c.Tick(1);
        Assert.Equal(0UL, c.Node(1).LeadTransferee);
        Assert.Equal(RaftRole.Leader, c.Node(1).Role);
        Assert.True(c.Propose(1, "b").Ok);
        c.Deliver();
        Assert.Equal(["a", "b"], c.Payloads(2));
        Assert.DoesNotContain(c.Sent, m => m.Type == MessageType.TimeoutNow);
    }
}
