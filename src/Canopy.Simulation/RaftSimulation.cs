// The seeded Raft simulation
// ==========================
//
// N simulated servers, each running the production RaftScheduler (and through it the production RaftNode) over
// a MemoryEngine with real crash semantics, in one thread and virtual time (SimLoop). Everything random comes
// from the seed, so a failing seed replays exactly: `canopy sim raft --seed S`.
//
// Faults (per seed, drawn from the seed): message loss, duplication, delay with jitter (so reordering) and rare
// long delays; partitions (isolate one server, split majority/minority, one-way link cuts) that heal; crashes
// that lose a random suffix of the unsynced writes (often timed inside an fsync window), followed by restarts
// from the engine; clock faults (a burst of ticks at once, a stall, a fast clock); membership changes (add a
// learner on a spare server, promote it once caught up, remove a voter — sometimes the leader); leadership
// transfers; log compaction (low threshold) so lagging and new replicas need snapshots.
//
// Checked after every event (raft-pitfalls "Checks the simulation runs every step"):
// - election safety: at most one leader per (group, term);
// - log matching: every entry any server persists is identified by (group, index, term): same data and the
//   same predecessor term everywhere (so, by induction, the same prefix);
// - leader completeness: a new leader's log holds every entry known to be committed;
// - committed entries never change, and a server's commit index never decreases within one incarnation;
// - state-machine safety: every server applies the same entry at each index, in order, with no gaps, and a
//   snapshot carries the same state as applying the log up to its index;
// - check-quorum: a ticking leader cut off from a quorum for 4 election timeouts has stepped down;
// - invariants the Raft node checks itself (RaftInvariantException), and any other exception, count too.
// At the end the network heals, every server restarts, and each group must elect a leader and apply a new
// entry on every voter (liveness).
namespace Canopy.Simulation;

using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Hashing;
using Canopy.Replication.MultiRaft;
using Canopy.Replication.Raft;
using Canopy.Storage;

/// <summary>Runs the seeded Raft simulation (`canopy sim raft`).</summary>
public static class RaftSimulation
{
    /// <summary>Names accepted by <see cref="RaftSimOptions.PlantBug"/>, each breaking one rule of raft-pitfalls.md.</summary>
    public static IReadOnlyList<string> PlantableBugs { get; } =
    [
        "ack-before-persist", "commit-prior-term", "vote-index-only", "truncate-on-stale-append", "prevote-raises-term",
        "no-check-quorum", "heartbeat-full-commit", "count-learners", "match-follows-stale", "leader-counts-unsynced",
        "never-wake-quiesced",
    ];

    /// <summary>Runs seeds FirstSeed .. FirstSeed+Seeds-1; prints failing seeds; ends with "seeds: N, violations: V".</summary>
    public static RaftSimReport RunMany(RaftSimOptions options, TextWriter output)
    {
        var sw = Stopwatch.StartNew();
        var failed = new List<ulong>();
        long steps = 0, commits = 0;

        // Seeds are independent and each is deterministic: run them on every core, report in seed order.
        var results = new SeedResult[options.Seeds];
        Parallel.For(0, options.Seeds, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, options.Parallelism) }, i =>
            results[i] = RunSeed(options.FirstSeed + (ulong)i, options));
        for (var i = 0; i < options.Seeds; i++)
        {
            var seed = options.FirstSeed + (ulong)i;
            var result = results[i];
            steps += result.Steps;
            commits += result.Applied;
            if (result.Violation is not null)
            {
                failed.Add(seed);
                output.WriteLine($"seed {seed}: VIOLATION at t={result.TimeMicros / 1000.0:F1} ms: {result.Violation}");
                output.WriteLine($"  replay: canopy sim raft --seed {seed} --servers {options.Servers} --groups {options.Groups} --duration {options.Duration.TotalSeconds}s{(options.PlantBug is null ? string.Empty : " --plant-bug " + options.PlantBug)}");
            }
            else if (options.Verbose)
            {
                output.WriteLine($"seed {seed}: ok, {result.Steps} steps, {result.Applied} entries applied, {result.Faults}");
            }
        }

        var report = new RaftSimReport(options.Seeds, failed.Count, failed, sw.Elapsed, steps, commits);
        output.WriteLine($"ran {options.Seeds} seeds in {sw.Elapsed.TotalSeconds:F1} s ({steps} steps, {commits} entries applied)");
        output.WriteLine($"seeds: {report.Seeds}, violations: {report.Violations}");
        return report;
    }

    /// <summary>The outcome of one seed.</summary>
    public sealed record SeedResult(string? Violation, long TimeMicros, long Steps, long Applied, string Faults);

    /// <summary>Runs one seed.</summary>
    public static SeedResult RunSeed(ulong seed, RaftSimOptions options)
    {
        var world = new SimWorld(seed, options);
        return world.Run();
    }

    internal static (RaftBugs Bugs, bool NeverWake) ParseBug(string? name) => name switch
    {
        null or "" => (RaftBugs.None, false),
        "ack-before-persist" => (new RaftBugs { AckBeforePersist = true }, false),
        "commit-prior-term" => (new RaftBugs { CommitPriorTermByCount = true }, false),
        "vote-index-only" => (new RaftBugs { VoteComparesIndexOnly = true }, false),
        "truncate-on-stale-append" => (new RaftBugs { TruncateOnStaleAppend = true }, false),
        "prevote-raises-term" => (new RaftBugs { PreVoteRaisesTerm = true }, false),
        "no-check-quorum" => (new RaftBugs { NoCheckQuorum = true }, false),
        "heartbeat-full-commit" => (new RaftBugs { HeartbeatFullCommit = true }, false),
        "count-learners" => (new RaftBugs { CountLearners = true }, false),
        "match-follows-stale" => (new RaftBugs { MatchFollowsStaleResponse = true }, false),
        "leader-counts-unsynced" => (new RaftBugs { LeaderCountsUnsynced = true }, false),
        "never-wake-quiesced" => (RaftBugs.None, true),
        _ => throw new ArgumentException($"unknown bug '{name}' (known: {string.Join(", ", PlantableBugs)})"),
    };
}

/// <summary>Thrown by the checker to stop a seed at the first violation.</summary>
internal sealed class SimViolation(string message) : Exception(message);

internal sealed class SimWorld
{
    private const long Ms = 1000;
    private const long TickMicros = 50 * Ms;
    private const int ElectionTicks = 10;

    private readonly ulong _seed;
    private readonly RaftSimOptions _options;
    private readonly SimLoop _loop;
    private readonly SimServer[] _servers;
    private readonly SimChecker _checker;
    private readonly SchedulerOptions _schedulerOptions;
    private readonly List<string> _faultLog = [];

    // Network state.
    private readonly HashSet<(ulong From, ulong To)> _cut = [];
    private double _loss;
    private double _duplicate;
    private long _delayBase;
    private long _delayJitter;
    private bool _faultsOn;
    private long _proposalCounter;

    public SimWorld(ulong seed, RaftSimOptions options)
    {
        _seed = seed;
        _options = options;
        _loop = new SimLoop(unchecked((int)(seed * 2654435761UL) ^ (int)(seed >> 32)));
        _checker = new SimChecker(options.Servers);
        var (bugs, neverWake) = RaftSimulation.ParseBug(options.PlantBug);
        var r = _loop.Random;
        _schedulerOptions = new SchedulerOptions
        {
            ElectionTicks = ElectionTicks,
            HeartbeatTicks = 2,
            LivenessTicks = ElectionTicks,
            CompactionThreshold = 30 + r.Next(200),
            CompactionKeep = r.Next(10),
            QuiesceAfterHeartbeats = 2,
            MaxInflight = 4 + r.Next(64),
            Bugs = bugs,
            BugNeverWakeQuiesced = neverWake,
        };
        _servers = new SimServer[options.Servers];
        for (var i = 0; i < options.Servers; i++)
        {
            _servers[i] = new SimServer(this, (ulong)(i + 1));
        }
    }

    internal SimLoop Loop => _loop;

    internal SimChecker Checker => _checker;

    internal SchedulerOptions SchedulerOptions => _schedulerOptions;

    internal ulong Seed => _seed;

    public RaftSimulation.SeedResult Run()
    {
        string? violation = null;
        try
        {
            Setup();
            var faultEnd = (long)_options.Duration.TotalMicroseconds;
            if (!_loop.RunUntil(faultEnd, CheckStep))
            {
                violation = _checker.Violation;
            }
            else
            {
                violation = HealAndCheckLiveness(faultEnd);
            }
        }
        catch (SimViolation v)
        {
            violation = v.Message;
        }
        catch (Exception ex) when (ex is RaftInvariantException or InvalidOperationException or FormatException or ArgumentException or IndexOutOfRangeException or KeyNotFoundException or NullReferenceException)
        {
            violation = $"{ex.GetType().Name}: {ex.Message}";
        }

        return new RaftSimulation.SeedResult(violation, _loop.Now, _loop.Steps, _checker.AppliedCount, string.Join("; ", _faultLog.Take(12)));
    }

    private bool CheckStep()
    {
        foreach (var s in _servers)
        {
            if (s.Alive)
            {
                _checker.CheckServer(s, _loop.Now);
                CheckQuorumRule(s);
            }
        }

        return _checker.Violation is null;
    }

    private void Setup()
    {
        var r = _loop.Random;
        _faultsOn = _options.Faults;
        if (_faultsOn)
        {
            _loss = r.NextDouble() < 0.3 ? 0 : r.NextDouble() * 0.15;
            _duplicate = r.NextDouble() * 0.03;
            _delayBase = 100 + r.Next(3000);
            _delayJitter = r.Next(20_000);
        }
        else
        {
            _delayBase = 200;
            _delayJitter = 500;
        }

        // Groups of 3 replicas on distinct servers (all servers if fewer than 3).
        var replicas = Math.Min(3, _servers.Length);
        for (var g = 1; g <= _options.Groups; g++)
        {
            var members = _servers.Select(s => s.Id).OrderBy(_ => r.Next()).Take(replicas).ToArray();
            var conf = new ConfState(members, []);
            foreach (var id in members)
            {
                Server(id).Scheduler!.Bootstrap((ulong)g, conf);
            }
        }

        foreach (var s in _servers)
        {
            foreach (var p in _servers)
            {
                s.Scheduler!.AddPeer(p.Id);
            }

            s.StartTicking(r.Next((int)TickMicros));
        }

        var end = (long)_options.Duration.TotalMicroseconds;
        ScheduleProposals(end);
        if (_faultsOn)
        {
            ScheduleFaults(end);
        }
    }

    internal SimServer Server(ulong id) => _servers[(int)id - 1];

    // ---------------------------------------------------------------- network

    internal void Send(ulong from, ulong to, IReadOnlyList<Message> messages)
    {
        long entries = 0;
        for (var i = 0; i < messages.Count; i++)
        {
            entries += messages[i].Entries.Length;
        }

        _loop.CountSent(messages.Count, entries); // counted before loss and cuts: the senders' work is the runaway
        CheckRejections(from, to, messages);
        if (to == 0 || to > (ulong)_servers.Length || _cut.Contains((from, to)))
        {
            return;
        }

        if (_faultsOn && _loop.Chance(_loss))
        {
            return;
        }

        var copies = _faultsOn && _loop.Chance(_duplicate) ? 2 : 1;
        for (var c = 0; c < copies; c++)
        {
            var delay = _delayBase + _loop.Between(0, _delayJitter);
            if (_faultsOn && _loop.Chance(0.005))
            {
                delay += _loop.Between(50 * Ms, 500 * Ms);
            }

            var target = Server(to);
            _loop.After(delay, () => target.Deliver(from, messages));
        }
    }

    /// <summary>
    /// A follower that rejects an append at or below the index its leader of the same term already counts as matched
    /// has lost entries it acknowledged (acknowledged before they were durable, or truncated by a stale append): a
    /// violation at once, before the damage shows as a lost commit or a message storm.
    /// </summary>
    private void CheckRejections(ulong from, ulong to, IReadOnlyList<Message> messages)
    {
        if (to == 0 || to > (ulong)_servers.Length || !Server(to).Alive)
        {
            return;
        }

        foreach (var m in messages)
        {
            if (m.Type != MessageType.AppendResp || !m.Reject)
            {
                continue;
            }

            if (Server(to).Scheduler?.Node(m.Group) is { Role: RaftRole.Leader } leader && leader.Term == m.Term
                && leader.ProgressOf(from) is { } p && p.Match >= m.Index && m.Index > 0)
            {
                _checker.FailNow($"lost acknowledged entries: s{from} rejects index {m.Index} of g{m.Group} in term {m.Term}, but leader s{to} counts it matched up to {p.Match}");
            }
        }
    }

    private bool Reachable(ulong a, ulong b) => a == b || (Server(b).Alive && !_cut.Contains((a, b)) && !_cut.Contains((b, a)));

    // ---------------------------------------------------------------- workload

    private void ScheduleProposals(long end)
    {
        var interval = 5 * Ms + _loop.Random.Next(40) * Ms;
        void Propose()
        {
            if (_loop.Now >= end)
            {
                return;
            }

            var g = (ulong)(1 + _loop.Random.Next(_options.Groups));
            ProposeAtLeader(g);
            _loop.After(interval, Propose);
        }

        _loop.After(interval, Propose);
    }

    private bool ProposeAtLeader(ulong group, byte[]? data = null)
    {
        // Clients with stale caches: sometimes propose at any server that believes it leads (a deposed leader
        // in a minority keeps appending entries that must never commit — divergent logs for the vote rules).
        var leader = _loop.Chance(0.3) ? AnyLeader(group) : FindLeader(group);
        if (leader is null)
        {
            return false;
        }

        data ??= NewCommand();
        return leader.Scheduler!.Propose(group, data).Ok;
    }

    private byte[] NewCommand()
    {
        var data = new byte[8 + _loop.Random.Next(24)];
        BinaryPrimitives.WriteInt64LittleEndian(data, ++_proposalCounter);
        return data;
    }

    private SimServer? AnyLeader(ulong group)
    {
        var leaders = _servers.Where(s => s.Alive && s.Scheduler!.Node(group) is { Role: RaftRole.Leader }).ToArray();
        return leaders.Length == 0 ? null : leaders[_loop.Random.Next(leaders.Length)];
    }

    private SimServer? FindLeader(ulong group)
    {
        SimServer? best = null;
        ulong bestTerm = 0;
        foreach (var s in _servers)
        {
            if (s.Alive && s.Scheduler!.Node(group) is { Role: RaftRole.Leader } n && n.Term >= bestTerm)
            {
                best = s;
                bestTerm = n.Term;
            }
        }

        return best;
    }

    // ---------------------------------------------------------------- faults

    private void ScheduleFaults(long end)
    {
        var r = _loop.Random;

        // Intensity: most seeds see a few faults; some see heavy churn (many leader changes, as figure 8 needs).
        var intensity = r.Next(10) switch
        {
            < 5 => 1,
            < 8 => 3,
            _ => 8,
        };
        _faultLog.Add($"intensity {intensity}, loss {_loss:P0}, dup {_duplicate:P1}, delay {_delayBase / 1000.0:F1}+{_delayJitter / 1000.0:F1} ms");
        var crashes = r.Next(4) * intensity;
        for (var i = 0; i < crashes; i++)
        {
            _loop.At(_loop.Between(500 * Ms, end), Crash);
        }

        var partitions = r.Next(5) * intensity;
        for (var i = 0; i < partitions; i++)
        {
            _loop.At(_loop.Between(200 * Ms, end), Partition);
        }

        var clocks = r.Next(4);
        for (var i = 0; i < clocks; i++)
        {
            _loop.At(_loop.Between(200 * Ms, end), ClockFault);
        }

        if (_servers.Length > 3)
        {
            var changes = r.Next(6);
            for (var i = 0; i < changes; i++)
            {
                _loop.At(_loop.Between(1000 * Ms, end - (2000 * Ms)), () => StartMembershipChange(end));
            }
        }

        if (_servers.Length > 3)
        {
            var extra = r.Next(3) * intensity;
            for (var i = 0; i < extra; i++)
            {
                _loop.At(_loop.Between(1000 * Ms, end - (2000 * Ms)), ExtraLearner);
            }
        }

        var transfers = r.Next(4) * intensity;
        for (var i = 0; i < transfers; i++)
        {
            _loop.At(_loop.Between(500 * Ms, end), Transfer);
        }
    }

    private void Crash()
    {
        var alive = _servers.Where(s => s.Alive).ToArray();
        if (alive.Length == 0)
        {
            return;
        }

        // Half the crashes hit a server that currently leads something: leader churn is where Raft bugs live.
        var leaders = alive.Where(a => a.Scheduler!.Groups.Any(g => a.Scheduler.Node(g)!.Role == RaftRole.Leader)).ToArray();
        var s = leaders.Length > 0 && _loop.Chance(0.5) ? leaders[_loop.Random.Next(leaders.Length)] : alive[_loop.Random.Next(alive.Length)];
        var downtime = _loop.Chance(0.5) ? _loop.Between(50 * Ms, 600 * Ms) : _loop.Between(600 * Ms, 4000 * Ms);
        if (_loop.Chance(0.6))
        {
            // Crash inside the next fsync window: the writes in flight are lost.
            s.CrashAtNextWrite = () => CrashNow(s, downtime);
            _loop.After(1000 * Ms, () =>
            {
                if (s.CrashAtNextWrite is not null)
                {
                    s.CrashAtNextWrite = null;
                    CrashNow(s, downtime);
                }
            });
        }
        else
        {
            CrashNow(s, downtime);
        }
    }

    private void CrashNow(SimServer s, long downtime)
    {
        if (!s.Alive)
        {
            return;
        }

        var lost = s.Crash();
        _faultLog.Add($"t={_loop.Now / Ms}ms crash s{s.Id} (lost {lost} unsynced batches)");
        _loop.After(downtime, () =>
        {
            if (!s.Alive)
            {
                s.Restart();
                _faultLog.Add($"t={_loop.Now / Ms}ms restart s{s.Id}");
            }
        });
    }

    private void Partition()
    {
        var r = _loop.Random;
        var ids = _servers.Select(s => s.Id).ToArray();
        var added = new List<(ulong, ulong)>();
        var kind = r.Next(3);
        if (kind == 0)
        {
            var x = ids[r.Next(ids.Length)];
            foreach (var y in ids.Where(y => y != x))
            {
                added.Add((x, y));
                added.Add((y, x));
            }

            _faultLog.Add($"t={_loop.Now / Ms}ms isolate s{x}");
        }
        else if (kind == 1)
        {
            var shuffled = ids.OrderBy(_ => r.Next()).ToArray();
            var minority = shuffled.Take(shuffled.Length / 2).ToHashSet();
            foreach (var a in ids)
            {
                foreach (var b in ids)
                {
                    if (minority.Contains(a) != minority.Contains(b))
                    {
                        added.Add((a, b));
                    }
                }
            }

            _faultLog.Add($"t={_loop.Now / Ms}ms split [{string.Join(",", minority)}]");
        }
        else
        {
            var a = ids[r.Next(ids.Length)];
            var b = ids[r.Next(ids.Length)];
            if (a != b)
            {
                added.Add((a, b));
                _faultLog.Add($"t={_loop.Now / Ms}ms cut s{a}->s{b}");
            }
        }

        foreach (var c in added)
        {
            _cut.Add(c);
        }

        _loop.After(_loop.Between(300 * Ms, 5000 * Ms), () =>
        {
            foreach (var c in added)
            {
                _cut.Remove(c);
            }
        });
    }

    private void ClockFault()
    {
        var alive = _servers.Where(s => s.Alive).ToArray();
        if (alive.Length == 0)
        {
            return;
        }

        var s = alive[_loop.Random.Next(alive.Length)];
        switch (_loop.Random.Next(3))
        {
            case 0:
                var burst = 5 + _loop.Random.Next(30);
                _faultLog.Add($"t={_loop.Now / Ms}ms clock jump s{s.Id} +{burst} ticks");
                for (var i = 0; i < burst && s.Alive; i++)
                {
                    s.Scheduler!.Tick();
                }

                break;
            case 1:
                var stall = _loop.Between(300 * Ms, 3000 * Ms);
                _faultLog.Add($"t={_loop.Now / Ms}ms clock stall s{s.Id} {stall / Ms}ms");
                s.StallUntil = _loop.Now + stall;
                break;
            default:
                _faultLog.Add($"t={_loop.Now / Ms}ms fast clock s{s.Id}");
                s.TickScale = 0.3 + (_loop.NextDouble() * 0.4);
                _loop.After(_loop.Between(500 * Ms, 3000 * Ms), () => s.TickScale = 1);
                break;
        }
    }

    private void Transfer()
    {
        var g = (ulong)(1 + _loop.Random.Next(_options.Groups));
        var leader = FindLeader(g);
        if (leader?.Scheduler!.Node(g) is not { } node)
        {
            return;
        }

        var voters = node.Conf.Voters.Where(v => v != leader.Id).ToArray();
        if (voters.Length > 0)
        {
            var target = voters[_loop.Random.Next(voters.Length)];
            if (leader.Scheduler.TransferLeadership(g, target))
            {
                _faultLog.Add($"t={_loop.Now / Ms}ms transfer g{g} s{leader.Id}->s{target}");
            }
        }
    }

    /// <summary>Adds a learner that stays a learner for a while (groups then have one or two learners), then removes it.</summary>
    private void ExtraLearner()
    {
        var g = (ulong)(1 + _loop.Random.Next(_options.Groups));
        var leader = FindLeader(g);
        if (leader?.Scheduler!.Node(g) is not { } node || node.Conf.Learners.Length > 1)
        {
            return;
        }

        var spare = _servers.Where(s => !node.Conf.Contains(s.Id)).Select(s => s.Id).ToArray();
        if (spare.Length == 0)
        {
            return;
        }

        var learner = spare[_loop.Random.Next(spare.Length)];
        if (leader.Scheduler.ProposeConfChange(g, ConfChangeType.AddLearner, learner).Ok)
        {
            _faultLog.Add($"t={_loop.Now / Ms}ms g{g} extra learner s{learner}");
            var tries = 0;
            void Remove()
            {
                var l = FindLeader(g);
                if (l?.Scheduler!.Node(g) is { } n && n.Conf.IsLearner(learner) && l.Scheduler.ProposeConfChange(g, ConfChangeType.Remove, learner).Ok)
                {
                    return;
                }

                if (++tries < 30)
                {
                    _loop.After(200 * Ms, Remove);
                }
            }

            _loop.After(_loop.Between(1000 * Ms, 4000 * Ms), Remove);
        }
    }

    /// <summary>Adds a learner on a spare server, promotes it once caught up, then removes another voter.</summary>
    private void StartMembershipChange(long end)
    {
        var g = (ulong)(1 + _loop.Random.Next(_options.Groups));
        var leader = FindLeader(g);
        if (leader?.Scheduler!.Node(g) is not { } node || node.Conf.Learners.Length > 0 || node.Conf.Voters.Length != 3)
        {
            return;
        }

        var spare = _servers.Where(s => !node.Conf.Contains(s.Id)).Select(s => s.Id).ToArray();
        if (spare.Length == 0)
        {
            return;
        }

        if (_loop.Chance(0.3))
        {
            // Remove first (3 → 2 voters), then add a learner and promote it (2 voters + 1 learner on the way).
            var victim = node.Conf.Voters[_loop.Random.Next(node.Conf.Voters.Length)];
            if (leader.Scheduler.ProposeConfChange(g, ConfChangeType.Remove, victim).Ok)
            {
                _faultLog.Add($"t={_loop.Now / Ms}ms g{g} remove s{victim} first");
                _loop.After(200 * Ms, () => AddAndPromote(g, end, removeAfter: false));
            }

            return;
        }

        AddAndPromote(g, end, removeAfter: true);
    }

    private void AddAndPromote(ulong g, long end, bool removeAfter)
    {
        var leader = FindLeader(g);
        if (leader?.Scheduler!.Node(g) is not { } node || node.Conf.Learners.Length > 0)
        {
            if (_loop.Now < end)
            {
                _loop.After(200 * Ms, () => AddAndPromote(g, end, removeAfter));
            }

            return;
        }

        var spare = _servers.Where(s => !node.Conf.Contains(s.Id)).Select(s => s.Id).ToArray();
        if (spare.Length == 0)
        {
            return;
        }

        var newcomer = spare[_loop.Random.Next(spare.Length)];
        if (!leader.Scheduler.ProposeConfChange(g, ConfChangeType.AddLearner, newcomer).Ok)
        {
            if (_loop.Now < end)
            {
                _loop.After(200 * Ms, () => AddAndPromote(g, end, removeAfter));
            }

            return;
        }

        _faultLog.Add($"t={_loop.Now / Ms}ms g{g} add learner s{newcomer}");
        var deadline = _loop.Now + (3000 * Ms);

        void Promote()
        {
            if (_loop.Now > end)
            {
                return;
            }

            var l = FindLeader(g);
            var n = l?.Scheduler!.Node(g);
            if (n is null || !n.Conf.IsLearner(newcomer))
            {
                if (n is not null && n.Conf.IsVoter(newcomer) && removeAfter)
                {
                    _loop.After(100 * Ms, RemoveOne);
                }
                else if (_loop.Now < deadline)
                {
                    _loop.After(100 * Ms, Promote);
                }

                return;
            }

            var caughtUp = n.ProgressOf(newcomer) is { } p && p.Match >= n.Committed;
            if (caughtUp && l!.Scheduler!.ProposeConfChange(g, ConfChangeType.PromoteLearner, newcomer).Ok)
            {
                _faultLog.Add($"t={_loop.Now / Ms}ms g{g} promote s{newcomer}");
                if (removeAfter)
                {
                    _loop.After(100 * Ms, RemoveOne);
                }
            }
            else if (_loop.Now < deadline)
            {
                _loop.After(100 * Ms, Promote);
            }
            else if (_loop.Chance(0.5))
            {
                // Give up: remove the learner again.
                l!.Scheduler!.ProposeConfChange(g, ConfChangeType.Remove, newcomer);
            }
        }

        void RemoveOne()
        {
            if (_loop.Now > end)
            {
                return;
            }

            var l = FindLeader(g);
            var n = l?.Scheduler!.Node(g);
            if (n is null || n.Conf.Voters.Length <= 3)
            {
                if (_loop.Now < deadline + (3000 * Ms))
                {
                    _loop.After(100 * Ms, RemoveOne);
                }

                return;
            }

            var victims = n.Conf.Voters.Where(v => v != newcomer).ToArray();
            var victim = victims[_loop.Random.Next(victims.Length)];
            if (l!.Scheduler!.ProposeConfChange(g, ConfChangeType.Remove, victim).Ok)
            {
                _faultLog.Add($"t={_loop.Now / Ms}ms g{g} remove s{victim}{(victim == l.Id ? " (the leader)" : string.Empty)}");
            }
            else if (_loop.Now < deadline + (3000 * Ms))
            {
                _loop.After(100 * Ms, RemoveOne);
            }
        }

        _loop.After(100 * Ms, Promote);
    }

    /// <summary>A ticking leader that cannot reach a quorum for 4 election timeouts must have stepped down
    /// (one timeout of slack for messages delayed from before the cut).</summary>
    private void CheckQuorumRule(SimServer s)
    {
        foreach (var g in s.Scheduler!.Groups)
        {
            var n = s.Scheduler.Node(g)!;
            var key = g;
            if (n.Role != RaftRole.Leader || n.IsQuiesced || !n.Conf.IsVoter(s.Id))
            {
                s.IsolatedLeaderTicks.Remove(key);
                continue;
            }

            var reachable = n.Conf.Voters.Count(v => Reachable(s.Id, v));
            if (reachable >= (n.Conf.Voters.Length / 2) + 1)
            {
                s.IsolatedLeaderTicks.Remove(key);
            }
            else if (!s.IsolatedLeaderTicks.ContainsKey(key))
            {
                s.IsolatedLeaderTicks[key] = (n.Term, s.TicksDone);
            }
            else if (s.IsolatedLeaderTicks[key] is var (term, since) && term == n.Term && s.TicksDone - since > 4 * ElectionTicks)
            {
                throw new SimViolation($"check-quorum: s{s.Id} still leads g{g} in term {n.Term} after {s.TicksDone - since} ticks without a reachable quorum");
            }
        }
    }

    // ---------------------------------------------------------------- liveness

    /// <summary>A quorum of the group's newest known configuration is alive.</summary>
    private bool HasLiveQuorum(ulong g)
    {
        RaftNode? newest = null;
        foreach (var s in _servers)
        {
            if (s.Alive && s.Scheduler!.Node(g) is { } n && (newest is null || n.LastTerm > newest.LastTerm || (n.LastTerm == newest.LastTerm && n.LastIndex > newest.LastIndex)))
            {
                newest = n;
            }
        }

        if (newest is null)
        {
            return false;
        }

        var alive = newest.Conf.Voters.Count(v => Server(v).Alive);
        return alive >= (newest.Conf.Voters.Length / 2) + 1;
    }

    private string? HealAndCheckLiveness(long faultEnd)
    {
        var hadFaults = _faultsOn;
        _faultsOn = false;
        _cut.Clear();
        _loss = 0;
        _duplicate = 0;
        foreach (var s in _servers)
        {
            s.CrashAtNextWrite = null;
            s.StallUntil = 0;
            s.TickScale = 1;
            if (!s.Alive)
            {
                s.Restart();
            }
        }

        // Sometimes one server (preferably a leader) stays down: the groups it led must recover without it,
        // which needs their quiesced followers to be woken by the failure detector.
        ulong down = 0;
        if (hadFaults && _servers.Length >= 3 && _loop.Chance(0.5))
        {
            var leaders = _servers.Where(s => s.Scheduler!.Groups.Any(g => s.Scheduler.Node(g)!.Role == RaftRole.Leader)).ToArray();
            var victim = leaders.Length > 0 ? leaders[_loop.Random.Next(leaders.Length)] : _servers[_loop.Random.Next(_servers.Length)];
            down = victim.Id;
            victim.Crash();
            _faultLog.Add($"t={_loop.Now / Ms}ms s{down} stays down");
        }

        _faultLog.Add($"t={_loop.Now / Ms}ms heal");
        var deadline = faultEnd + (20_000 * Ms);
        var markers = new Dictionary<ulong, (ulong Index, ulong Term)>();
        var done = new HashSet<ulong>();
        while (_loop.Now < deadline)
        {
            if (!_loop.RunUntil(_loop.Now + (200 * Ms), CheckStep))
            {
                return _checker.Violation;
            }

            for (var g = 1UL; g <= (ulong)_options.Groups; g++)
            {
                if (done.Contains(g))
                {
                    continue;
                }

                if (down != 0 && !HasLiveQuorum(g))
                {
                    done.Add(g); // a quorum of its voters includes the server that is down: nothing to require
                    continue;
                }

                var leader = FindLeader(g);
                var node = leader?.Scheduler!.Node(g);
                if (node is null)
                {
                    continue;
                }

                if (markers.TryGetValue(g, out var marker) && _checker.CommittedTerm(g, marker.Index) is { } t && t != marker.Term)
                {
                    markers.Remove(g); // lost in a leader change: propose another
                }

                if (!markers.TryGetValue(g, out marker))
                {
                    var res = leader!.Scheduler!.Propose(g, NewCommand());
                    if (res.Ok)
                    {
                        markers[g] = (res.Index, res.Term);
                    }

                    continue;
                }

                if (_checker.CommittedTerm(g, marker.Index) == marker.Term
                    && node.Conf.Voters.All(v => v == down || (Server(v).StateMachine(g) is { } sm && sm.Applied >= marker.Index)))
                {
                    done.Add(g);
                }
            }

            if (done.Count == _options.Groups)
            {
                return null;
            }
        }

        var missing = Enumerable.Range(1, _options.Groups).Select(g => (ulong)g).Where(g => !done.Contains(g)).ToArray();
        var detail = string.Join("; ", missing.Select(g =>
        {
            var states = _servers.Select(s => !s.Alive ? $"s{s.Id}:down" : s.Scheduler!.Node(g) is { } n ? $"s{s.Id}:{n.Role}/t{n.Term}/c{n.Committed}/a{n.Applied}/l{n.LastIndex}{(n.IsQuiesced ? "/q" : string.Empty)} {n.Conf}" : $"s{s.Id}:-");
            return $"g{g} [{string.Join(" | ", states)}]";
        }));
        return $"liveness: after healing, no leader applied a new entry on every voter within 20 s: {detail}";
    }
}

/// <summary>One simulated server: engine, scheduler, log writer and transport endpoints.</summary>
internal sealed class SimServer : ILogWriter, IRaftTransport, IStateMachineFactory
{
    private readonly SimWorld _world;
    private readonly MemoryEngine _engine = new();
    private readonly Dictionary<ulong, SimStateMachine> _machines = [];
    private int _incarnation;
    private long _writeSeq;

    public SimServer(SimWorld world, ulong id)
    {
        _world = world;
        Id = id;
        NewScheduler();
    }

    public ulong Id { get; }

    public bool Alive { get; private set; } = true;

    public RaftScheduler? Scheduler { get; private set; }

    public long StallUntil { get; set; }

    public double TickScale { get; set; } = 1;

    public long TicksDone { get; private set; }

    public Action? CrashAtNextWrite { get; set; }

    public Dictionary<ulong, (ulong Term, long Since)> IsolatedLeaderTicks { get; } = [];

    public int Incarnation => _incarnation;

    public SimStateMachine? StateMachine(ulong group) => Alive && _machines.TryGetValue(group, out var sm) ? sm : null;

    public void StartTicking(long offset)
    {
        var inc = _incarnation;
        var loop = _world.Loop;
        void Tick()
        {
            if (!Alive || inc != _incarnation)
            {
                return;
            }

            if (loop.Now >= StallUntil)
            {
                TicksDone++;
                Scheduler!.Tick();
            }

            loop.After((long)(50_000 * TickScale), Tick);
        }

        loop.After(offset, Tick);
    }

    public void Deliver(ulong from, IReadOnlyList<Message> messages)
    {
        if (Alive && _world.Loop.Now >= StallUntil)
        {
            Scheduler!.Receive(from, messages);
        }
        else if (Alive)
        {
            // A stalled process still receives into its socket buffer: deliver after the stall.
            var inc = _incarnation;
            _world.Loop.At(StallUntil, () =>
            {
                if (Alive && inc == _incarnation)
                {
                    Scheduler!.Receive(from, messages);
                }
            });
        }
    }

    /// <summary>Crashes: unsynced writes are lost (a random suffix of them), all volatile state too.</summary>
    public int Crash()
    {
        Alive = false;
        _incarnation++;
        _machines.Clear();
        Scheduler = null;
        IsolatedLeaderTicks.Clear();
        return _engine.Crash(_world.Loop.Random);
    }

    public void Restart()
    {
        Alive = true;
        _incarnation++;
        NewScheduler();
        Scheduler!.Load();
        _world.Checker.OnRestart(this);
        StartTicking(_world.Loop.Random.Next(50_000));
    }

    private void NewScheduler()
    {
        Scheduler = new RaftScheduler(Id, _engine, this, this, this, _world.SchedulerOptions, unchecked((int)_world.Seed ^ (int)(Id * 31) ^ (_incarnation * 7)));
        var sched = Scheduler;
        sched.OnReadyTaken = (g, rd) => _world.Checker.OnReady(this, g, rd);
    }

    // ILogWriter: the write is applied at once (unsynced) and becomes durable after a simulated fsync.
    void ILogWriter.Submit(WriteBatch batch)
    {
        _engine.Write(batch, sync: false);
        var inc = _incarnation;
        var seq = ++_writeSeq;
        var loop = _world.Loop;
        var delay = loop.Chance(0.05) ? loop.Between(2_000, 30_000) : loop.Between(50, 1_500);
        if (CrashAtNextWrite is { } crash)
        {
            CrashAtNextWrite = null;
            loop.After(loop.Between(0, delay), crash);
        }

        loop.After(delay, () =>
        {
            if (Alive && inc == _incarnation)
            {
                _engine.Sync();
                Scheduler!.OnWriteDurable();
            }
        });
    }

    void IRaftTransport.Send(ulong server, IReadOnlyList<Message> messages) => _world.Send(Id, server, messages);

    IReplicaStateMachine IStateMachineFactory.Open(ulong group, IStorageEngine engine)
    {
        var sm = new SimStateMachine(_world.Checker, this, group, engine);
        _machines[group] = sm;
        return sm;
    }

    void IStateMachineFactory.Destroyed(ulong group) => _machines.Remove(group);
}

/// <summary>
/// The simulated state machine: a hash chain over applied entries, persisted (index, hash) under the group's
/// range-local keys. Reports every apply and snapshot to the checker.
/// </summary>
internal sealed class SimStateMachine : IReplicaStateMachine
{
    private readonly SimChecker _checker;
    private readonly SimServer _server;
    private readonly ulong _group;
    private readonly byte[] _key;
    private ulong _hash;

    public SimStateMachine(SimChecker checker, SimServer server, ulong group, IStorageEngine engine)
    {
        _checker = checker;
        _server = server;
        _group = group;
        _key = RaftStorage.GroupKey(group, (byte)'m');
        if (engine.Get(_key) is { Length: 16 } v)
        {
            Applied = BinaryPrimitives.ReadUInt64LittleEndian(v);
            _hash = BinaryPrimitives.ReadUInt64LittleEndian(v.AsSpan(8));
        }
    }

    public ulong Applied { get; private set; }

    public void Apply(in Entry entry, WriteBatch batch)
    {
        if (entry.Index != Applied + 1)
        {
            throw new SimViolation($"state machine: s{_server.Id} g{_group} applied {entry.Index} after {Applied}");
        }

        Span<byte> head = stackalloc byte[25];
        BinaryPrimitives.WriteUInt64LittleEndian(head, _hash);
        BinaryPrimitives.WriteUInt64LittleEndian(head[8..], entry.Index);
        BinaryPrimitives.WriteUInt64LittleEndian(head[16..], entry.Term);
        head[24] = (byte)entry.Type;
        var h = new XxHash64();
        h.Append(head);
        h.Append(entry.Data.Span);
        _hash = h.GetCurrentHashAsUInt64();
        Applied = entry.Index;
        _checker.RecordCommitted(_server, _group, entry, _server.Scheduler?.Node(_group)?.Term ?? ulong.MaxValue);
        _checker.OnApply(_server, _group, Applied, _hash);
        batch.Put(_key, Encode());
    }

    public void Install(Snapshot snapshot, WriteBatch batch)
    {
        if (snapshot.Data.Length == 16)
        {
            Applied = BinaryPrimitives.ReadUInt64LittleEndian(snapshot.Data.Span);
            _hash = BinaryPrimitives.ReadUInt64LittleEndian(snapshot.Data.Span[8..]);
        }
        else
        {
            Applied = snapshot.Meta.Index;
            _hash = 0;
        }

        if (Applied != snapshot.Meta.Index)
        {
            throw new SimViolation($"snapshot: g{_group} data at {Applied} but metadata says {snapshot.Meta.Index}");
        }

        _checker.OnApply(_server, _group, Applied, _hash);
        batch.Put(_key, Encode());
    }

    public (ulong Index, ReadOnlyMemory<byte> Data) Capture() => (Applied, Encode());

    private byte[] Encode()
    {
        var v = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(v, Applied);
        BinaryPrimitives.WriteUInt64LittleEndian(v.AsSpan(8), _hash);
        return v;
    }
}

/// <summary>The safety checker. Global truth per group, compared against every server after every event.</summary>
internal sealed class SimChecker
{
    private readonly Dictionary<(ulong Group, ulong Term), ulong> _leaders = [];
    private readonly Dictionary<(ulong Group, ulong Index, ulong Term), (ulong Hash, ulong PrevTerm)> _entries = [];
    // Committed entries: their term and data, and the lowest term of a server that saw them committed (an upper
    // bound of the term in which they were committed: a server learns of a commit in its term or later).
    private readonly Dictionary<(ulong Group, ulong Index), (ulong Term, ulong Hash, ulong CommitTerm)> _committed = [];
    private readonly Dictionary<ulong, ulong> _maxCommitted = [];
    private readonly Dictionary<(ulong Group, ulong Index), ulong> _stateHashes = [];
    private readonly Dictionary<(ulong Server, ulong Group), ulong> _seenCommit = [];
    private readonly Dictionary<(ulong Server, ulong Group, ulong Term, ulong Follower), ulong> _matches = [];
    private readonly ulong[] _serverIds;

    public SimChecker(int servers) => _serverIds = Enumerable.Range(1, servers).Select(i => (ulong)i).ToArray();

    public string? Violation { get; private set; }

    public long AppliedCount { get; private set; }

    /// <summary>The term of the committed entry at (group, index), if known.</summary>
    public ulong? CommittedTerm(ulong group, ulong index) => _committed.TryGetValue((group, index), out var c) ? c.Term : null;

    public void OnRestart(SimServer s)
    {
        foreach (var key in _seenCommit.Keys.Where(k => k.Server == s.Id).ToArray())
        {
            _seenCommit.Remove(key);
        }
    }

    /// <summary>Log matching: every persisted entry agrees with every other copy of (group, index, term).</summary>
    public void OnReady(SimServer s, ulong group, Ready rd)
    {
        if (rd.Entries.Length == 0)
        {
            return;
        }

        var node = s.Scheduler!.Node(group)!;
        var prevTerm = node.TermAt(rd.Entries[0].Index - 1) ?? ulong.MaxValue;
        foreach (var e in rd.Entries)
        {
            var key = (group, e.Index, e.Term);
            var hash = EntryHash(e);
            if (_entries.TryGetValue(key, out var known))
            {
                if (known.Hash != hash)
                {
                    Fail($"log matching: g{group} index {e.Index} term {e.Term} has different data on s{s.Id}");
                }

                if (prevTerm != ulong.MaxValue && known.PrevTerm != ulong.MaxValue && known.PrevTerm != prevTerm)
                {
                    Fail($"log matching: g{group} index {e.Index} term {e.Term} follows term {prevTerm} on s{s.Id} but term {known.PrevTerm} elsewhere");
                }
            }
            else
            {
                _entries[key] = (hash, prevTerm);
            }

            prevTerm = e.Term;
        }
    }

    public void OnApply(SimServer s, ulong group, ulong index, ulong stateHash)
    {
        AppliedCount++;
        var key = (group, index);
        if (_stateHashes.TryGetValue(key, out var known))
        {
            if (known != stateHash)
            {
                Fail($"state-machine safety: g{group} state after index {index} differs on s{s.Id}");
            }
        }
        else
        {
            _stateHashes[key] = stateHash;
        }
    }

    /// <summary>
    /// An entry <paramref name="s"/> knows to be committed, seen while it was in <paramref name="term"/> (an upper
    /// bound of the term it was committed in). Called from the per-step scan and from every apply, so an entry
    /// committed, applied and compacted within one step is still recorded.
    /// </summary>
    public void RecordCommitted(SimServer s, ulong g, in Entry e, ulong term)
    {
        var i = e.Index;
        var hash = EntryHash(e);
        if (_committed.TryGetValue((g, i), out var known))
        {
            if (known.Term != e.Term || known.Hash != hash)
            {
                Fail($"committed entry changed: g{g} index {i} was term {known.Term}, s{s.Id} commits term {e.Term}");
            }

            if (term < known.CommitTerm)
            {
                _committed[(g, i)] = known with { CommitTerm = term };
            }
        }
        else
        {
            _committed[(g, i)] = (e.Term, hash, term);
        }
    }

    public void CheckServer(SimServer s, long now)
    {
        var sched = s.Scheduler!;
        foreach (var g in sched.Groups)
        {
            var n = sched.Node(g)!;

            // Election safety and leader completeness.
            if (n.Role == RaftRole.Leader)
            {
                if (_leaders.TryGetValue((g, n.Term), out var other))
                {
                    if (other != s.Id)
                    {
                        Fail($"election safety: g{g} term {n.Term} has two leaders, s{other} and s{s.Id}");
                    }
                }
                else
                {
                    _leaders[(g, n.Term)] = s.Id;
                    CheckLeaderCompleteness(s, g, n);
                }

                // A leader's match index for a follower never decreases within its term (raft-pitfalls 5),
                // while the follower stays a member (a removed and re-added member starts again from 0).
                foreach (var f in _serverIds)
                {
                    var mk = (s.Id, g, n.Term, f);
                    if (n.ProgressOf(f) is { } p)
                    {
                        if (_matches.TryGetValue(mk, out var prev) && p.Match < prev)
                        {
                            Fail($"match index of s{f} at leader s{s.Id} of g{g} went back from {prev} to {p.Match} in term {n.Term}");
                        }

                        _matches[mk] = p.Match;
                    }
                    else
                    {
                        _matches.Remove(mk);
                    }
                }
            }

            // Committed entries never change; commit never decreases within an incarnation.
            var seenKey = (s.Id, g);
            _seenCommit.TryGetValue(seenKey, out var seen);
            if (n.Committed < seen)
            {
                Fail($"commit index of g{g} on s{s.Id} went back from {seen} to {n.Committed}");
            }

            for (var i = Math.Max(seen + 1, n.FirstIndex); i <= n.Committed; i++)
            {
                var e = n.EntryAt(i);
                if (e is null)
                {
                    break;
                }

                RecordCommitted(s, g, e.Value, n.Term);
            }

            _seenCommit[seenKey] = n.Committed;
            if (!_maxCommitted.TryGetValue(g, out var max) || n.Committed > max)
            {
                _maxCommitted[g] = n.Committed;
            }
        }
    }

    /// <summary>
    /// Every entry committed in a term before the new leader's term is in its log (Raft's leader completeness).
    /// A leader of an old term may appear late (its vote grants were delayed) and need not hold entries committed
    /// in later terms.
    /// </summary>
    private void CheckLeaderCompleteness(SimServer s, ulong g, RaftNode n)
    {
        if (!_maxCommitted.TryGetValue(g, out var max))
        {
            return;
        }

        for (var i = n.FirstIndex; i <= max; i++)
        {
            if (_committed.TryGetValue((g, i), out var c) && c.CommitTerm < n.Term && n.TermAt(i) != c.Term)
            {
                Fail($"leader completeness: s{s.Id} leads g{g} in term {n.Term} without entry {i} (term {c.Term}) committed by term {c.CommitTerm}; it has {(i > n.LastIndex ? "nothing" : $"term {n.TermAt(i)}")} there");
            }
        }
    }

    private static ulong EntryHash(in Entry e)
    {
        var h = new XxHash64((long)e.Type);
        h.Append(e.Data.Span);
        return h.GetCurrentHashAsUInt64();
    }

    private void Fail(string message)
    {
        Violation ??= message;
        throw new SimViolation(message);
    }

    /// <summary>Records a violation found outside the per-step checks (e.g. in the network).</summary>
    public void FailNow(string message) => Fail(message);
}
