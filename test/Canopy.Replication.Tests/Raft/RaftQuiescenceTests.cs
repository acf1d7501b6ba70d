// Quiescence (pitfall 17): an idle group stops ticking and sending; a proposal wakes it; a quiesced follower
// does not campaign until the driver wakes it.
using Canopy.Replication.Raft;

namespace Canopy.Replication.Tests.Raft;

public sealed class RaftQuiescenceTests
{
    [Fact]
    public void IdleGroupQuiescesAndAProposalWakesIt()
    {
        var c = new RaftTestCluster(3);
        Assert.True(c.Elect(1));
        Assert.True(c.TickUntil(() => c.Ids.All(id => c.Node(id).IsQuiesced), 20), "the idle group did not quiesce within 20 ticks");
        Assert.Contains(c.Sent, m => m.Type == MessageType.Heartbeat && (m.Flags & MessageFlags.Quiesce) != 0);

        var sent = c.Sent.Count;
        var readies = c.Readies.Count;
        c.TickAll(200);
        Assert.Equal(sent, c.Sent.Count);
        Assert.Equal(readies, c.Readies.Count);

        var r = c.Propose(1, "w");
        Assert.True(r.Ok);
        Assert.False(c.Node(1).IsQuiesced);
        c.Deliver();
        foreach (var id in c.Ids)
        {
            Assert.False(c.Node(id).IsQuiesced);
            Assert.Equal(["w"], c.Payloads(id));
        }

        Assert.True(c.TickUntil(() => c.Ids.All(id => c.Node(id).IsQuiesced), 20), "the group did not quiesce again");
        Assert.Equal(1UL, c.Leader());
    }

    [Fact]
    public void QuiescedFollowerDoesNotCampaignUntilWoken()
    {
        var c = new RaftTestCluster(3);
        Assert.True(c.Elect(1));
        Assert.True(c.TickUntil(() => c.Ids.All(id => c.Node(id).IsQuiesced), 20));
        var term = c.Node(1).Term;

        // The leader vanishes while the group is quiet: nobody notices.
        c.Isolate(1);
        var sent = c.Sent.Count;
        c.TickAll(1000);
        Assert.Equal(sent, c.Sent.Count);
        foreach (var id in new ulong[] { 2, 3 })
        {
            Assert.Equal(term, c.Node(id).Term);
            Assert.Equal(RaftRole.Follower, c.Node(id).Role);
            Assert.True(c.Node(id).IsQuiesced);
        }

        // The driver's failure detector wakes one follower: the group elects a new leader.
        c.Node(2).Wake();
        Assert.False(c.Node(2).IsQuiesced);
        Assert.True(c.TickUntil(() => c.Leader() is 2 or 3, 200), "no new leader after waking a follower");
        Assert.True(c.Node(c.Leader()).Term > term);
    }
    private const int ElectionTicks = 10;

    // Regression (found by this test): a quiesced follower woken by a message that does not come from its leader
    // started its election clock, but nothing woke the quiesced leader, so no heartbeat reset that clock: the follower times out, its pre-vote is granted by
    // another follower woken the same way (or by the restarted node, which knows no leader) and a healthy leader that
    // reaches a majority is deposed. Without quiescence the same faults change nothing (the control test below).
    [Fact]
    public void RestartedFollowerThatCannotReachTheLeaderDoesNotDeposeAQuiescedLeader() => AssertLeaderSurvivesOneWayRestart(quiesceAfterHeartbeats: 2);

    [Fact]
    public void RestartedFollowerThatCannotReachTheLeaderDoesNotDeposeAnActiveLeader() => AssertLeaderSurvivesOneWayRestart(quiesceAfterHeartbeats: 0);

    /// <summary>
    /// Three voters led by 1. Node 3 restarts (unquiesced, knowing no leader) and its messages to 1 are lost; 1 -> 3 and
    /// 1 <-> 2 work, so the leader still reaches a majority. The leader and term must not change.
    /// </summary>
    private static void AssertLeaderSurvivesOneWayRestart(int quiesceAfterHeartbeats)
    {
        var c = new RaftTestCluster(3, cfg => cfg with { QuiesceAfterHeartbeats = quiesceAfterHeartbeats });
        Assert.True(c.Elect(1));
        c.TickAll(ElectionTicks);
        Assert.Equal(quiesceAfterHeartbeats > 0, c.Ids.All(id => c.Node(id).IsQuiesced));
        var term = c.Node(1).Term;

        c.Crash(3);
        c.Drop(3, 1);
        c.TickAll(10 * ElectionTicks);
        Assert.Equal(1UL, c.Leader());
        Assert.Equal(term, c.Node(1).Term);
        Assert.Equal(term, c.Node(2).Term);
        Assert.True(c.Propose(1, "still leading").Ok);
        c.Deliver();
        Assert.Equal(["still leading"], c.Payloads(2));
    }
}
