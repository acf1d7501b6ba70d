// Seeded random schedules on the scripted cluster: ticks, proposals, partitions, one-way drops, restarts, replays of
// old messages, compactions, transfers and membership changes. Every step checks election safety (one leader per term),
// durable commit never going back, and state-machine safety; at the end, once healed, the group must commit again and
// every committed entry must be in the final leader's log. Deterministic: fixed seeds.
using Canopy.Replication.Raft;

namespace Canopy.Replication.Tests.Raft;

public sealed class RaftRandomScheduleTests
{
    [Fact]
    public void RandomSchedulesKeepSafetyAndRecover()
    {
        var failures = new List<string>();
        for (var seed = 1; seed <= 40; seed++)
        {
            try
            {
                if (Run(seed) is { } violation)
                {
                    failures.Add($"seed {seed}: {violation}");
                }
            }
            catch (RaftInvariantException e)
            {
                failures.Add($"seed {seed}: {e.Message}");
            }
        }

        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    private static string? Run(int seed)
    {
        var rnd = new Random(seed);
        var quiesce = rnd.Next(2) == 0 ? 2 : 0;
        var maxBytes = rnd.Next(2) == 0 ? 1 : 1L << 20;
        var c = new RaftTestCluster(5, cfg => cfg with { QuiesceAfterHeartbeats = quiesce, MaxMessageBytes = maxBytes, MaxInflight = 4 }, seed);
        var leaderOfTerm = new Dictionary<ulong, ulong>();
        var durableCommit = new Dictionary<ulong, ulong>();
        var cmd = 0;
        for (var step = 0; step < 300; step++)
        {
            var op = rnd.Next(100);
            var id = (ulong)rnd.Next(1, 6);
            var leader = c.Leader();
            switch (op)
            {
                case < 40:
                    c.TickAll();
                    break;
                case < 60 when leader != 0:
                    c.Propose(leader, $"c{cmd++}");
                    c.Deliver();
                    break;
                case < 65:
                    c.Isolate(id);
                    break;
                case < 72:
                    c.Heal();
                    break;
                case < 75:
                    c.Crash(id);
                    c.Deliver();
                    break;
                case < 80 when c.Sent.Count > 0:
                    c.Inject(c.Sent[rnd.Next(c.Sent.Count)]); // a duplicated, delayed message
                    break;
                case < 83:
                    c.Compact(id, c.Node(id).Applied > 3 ? c.Node(id).Applied - 3 : 0);
                    break;
                case < 86 when leader != 0:
                    c.Node(leader).TransferLeadership(id);
                    c.Deliver();
                    break;
                case < 88:
                    foreach (var n in c.Ids)
                    {
                        c.Node(n).Wake();
                    }

                    break;
                case < 90:
                    c.Drop(id, (ulong)rnd.Next(1, 6));
                    break;
                case < 94 when leader != 0:
                    var conf = c.Node(leader).Conf;
                    var change = conf.IsVoter(id) ? (conf.Voters.Length > 3 ? ConfChangeType.Remove : ConfChangeType.AddVoter)
                        : conf.IsLearner(id) ? (rnd.Next(2) == 0 ? ConfChangeType.PromoteLearner : ConfChangeType.Remove)
                        : ConfChangeType.AddLearner;
                    c.Node(leader).ProposeConfChange(change, id);
                    c.Deliver();
                    break;
                default:
                    c.TickAll(5);
                    break;
            }

            foreach (var (nid, rd) in c.Readies.Where(r => r.Ready.Role == RaftRole.Leader))
            {
                if (leaderOfTerm.TryGetValue(rd.Term, out var other) && other != nid)
                {
                    return $"two leaders in term {rd.Term}: {other} and {nid}";
                }

                leaderOfTerm[rd.Term] = nid;
            }

            c.Readies.Clear();
            foreach (var nid in c.Ids)
            {
                var commit = c.DiskOf(nid).HardState.Commit;
                if (durableCommit.TryGetValue(nid, out var prev) && commit < prev)
                {
                    return $"node {nid}: durable commit went back from {prev} to {commit}";
                }

                durableCommit[nid] = commit;
            }

            if (c.AppliedConflicts.Count > 0)
            {
                return c.AppliedConflicts[0];
            }
        }

        // Heal everything; the group must elect a leader and commit a new entry on every member.
        c.Heal();
        foreach (var n in c.Ids)
        {
            c.Node(n).Wake();
        }

        for (var attempt = 0; attempt < 10; attempt++)
        {
            c.TickUntil(() => c.Leader() != 0 && c.Node(c.Leader()).Conf.All.All(i => c.Node(i).Term == c.Node(c.Leader()).Term), 300);
            var leader = c.Leader();
            if (leader == 0)
            {
                return "no leader after healing";
            }

            var final = $"final{attempt}";
            if (!c.Propose(leader, final).Ok)
            {
                c.TickAll(30);
                continue;
            }

            c.TickAll(60);
            leader = c.Leader();
            if (leader != 0 && c.Node(leader).Conf.All.All(n => c.Payloads(n).Contains(final)))
            {
                var lost = c.LostCommittedEntries(leader);
                return lost.Count > 0 ? $"committed entry lost: {lost[0]}" : c.AppliedConflicts.FirstOrDefault();
            }
        }

        return "no entry committed on every member after healing";
    }
}
