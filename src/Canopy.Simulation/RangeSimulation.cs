// The seeded range simulation
// ===========================
//
// The range layer (docs/ranges.md) in the simulation of the Raft layer: N simulated servers, each running the
// production RaftScheduler over a MemoryEngine with real crash semantics, with the production RangeStateMachine
// as every group's state machine (bootstrapped from RangeStateMachine.InitialSnapshot), in one thread and virtual
// time (SimLoop). A failing seed replays exactly: `canopy sim ranges --seed S`.
//
// Each server has a HybridClock over its own simulated physical clock: virtual time plus a skew that wanders
// inside ±max offset/2 (SimClock), so any two clocks differ by less than the max offset while their rates drift.
// On top of it runs a deterministic, synchronous re-implementation of CanopyServer's lease manager and evaluation
// (RangeSimServer), with the same rules:
// - lease manager (every 50 ms, for each range this server leads): extend its own lease when less than half is
//   left; take a lease over only once the previous one expired (start = now > its expiration); one lease
//   proposal in flight per range (forgotten after its outcome or one lease duration);
// - requests: the latch of the key (one operation per key at a time per server), then EnsureLease: serve if
//   Lease.CanServe(me, now, maxOffset); else NotLeaseholder with the holder (or the Raft leader) as a hint; a
//   leader without a servable lease asks for one and retries every 10 ms for up to lease duration + 1 s;
// - reads: at the HLC's now from the local MVCC state; writes: timestamped by the HLC, proposed as a
//   WriteCommand carrying the lease sequence, acknowledged only when applied here with ApplyResult.Applied
//   (proposal outcomes tracked exactly as RaftHost does: Committed / Dropped / Ambiguous; results through
//   RangeStateMachine.TakeResult); 4 s proposal timeout → Ambiguous.
//
// Clients issue single-key reads and writes (each write a unique value) on a few keys of each range against
// random servers, following NotLeaseholder hints and retrying what provably did not happen; a write whose outcome
// they cannot know (timeout, Ambiguous) ends ambiguous. Faults as in the Raft simulation: loss, duplication, delay
// and reordering of Raft messages; partitions; crashes losing unsynced writes (often inside an fsync window) and
// restarts; process pauses; tick bursts and fast tickers; leadership transfers; low compaction thresholds
// (snapshots of the range state). With EvaluationPauses, also pauses between a request's lease check and its
// timestamp.
//
// Checks: the lease checker (RangeSimChecker) at every apply, snapshot, recovery, read served and write applied;
// at the end, every key's history must be linearizable (RegisterLinearizability); and after healing, every range
// must get a leaseholder and serve a write and a read (liveness).
//
// Two bugs this simulation found in CanopyServer, now fixed there (RangeSimOptions.ServerFixes, on by default; off,
// `--as-server`, replays the server as it was before the fixes, pinned by the skipped CanopyServerAsItIsIsSafe):
// (1) stale reads after a restart — applies (and commit-index-only hard states) are unsynced, so a crash can lose
// the apply of an acknowledged write while the lease is still valid (`canopy sim ranges --seed 103 --as-server`).
// The simulation fixes it by serving a range only once its replica applied up to the end of the recovered log;
// CanopyServer fixes it differently: it never serves under a lease that started before its process started (the
// two rules are not the same code: keep them in mind when either changes). (2) The lease is checked at the
// request's own timestamp (same fix in both) instead of checking at one HLC time and then taking the timestamp
// (`canopy sim ranges --seed 149 --as-server --evaluation-pauses`).
namespace Canopy.Simulation;

using System.Buffers.Binary;
using System.Diagnostics;
using Canopy.Clock;
using Canopy.Mvcc;
using Canopy.Ranges;
using Canopy.Replication.MultiRaft;
using Canopy.Replication.Raft;
using Canopy.Storage;

/// <summary>Runs the seeded range simulation (`canopy sim ranges`).</summary>
public static class RangeSimulation
{
    /// <summary>Names accepted by <see cref="RangeSimOptions.PlantBug"/>: each breaks one rule of the simulated evaluation.</summary>
    public static IReadOnlyList<string> PlantableBugs { get; } =
    [
        "serve-without-margin", "early-takeover", "skip-sequence-check", "read-any-replica", "ignore-apply-result", "write-ts-before-check",
    ];

    /// <summary>Runs seeds FirstSeed .. FirstSeed+Seeds-1; prints failing seeds; ends with "seeds: N, violations: V".</summary>
    public static RangeSimReport RunMany(RangeSimOptions options, TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        var sw = Stopwatch.StartNew();
        var results = new SeedResult[options.Seeds];
        Parallel.For(0, options.Seeds, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, options.Parallelism) }, i =>
            results[i] = RunSeed(options.FirstSeed + (ulong)i, options));

        var failed = new List<ulong>();
        long steps = 0, ops = 0, ambiguous = 0, leases = 0, leaseChanged = 0;
        var inconclusive = 0;
        for (var i = 0; i < options.Seeds; i++)
        {
            var seed = options.FirstSeed + (ulong)i;
            var r = results[i];
            steps += r.Steps;
            ops += r.Operations;
            ambiguous += r.Ambiguous;
            leases += r.Leases;
            leaseChanged += r.LeaseChangedWrites;
            inconclusive += r.Inconclusive;
            if (r.Violation is not null)
            {
                failed.Add(seed);
                output.WriteLine($"seed {seed}: VIOLATION at t={r.TimeMicros / 1000.0:F1} ms: {r.Violation}");
                output.WriteLine($"  replay: {ReplayCommand(seed, options)}");
                output.WriteLine($"  faults: {r.Faults}");
            }
            else if (options.Verbose)
            {
                output.WriteLine($"seed {seed}: ok, {r.Steps} steps, {r.Operations} operations ({r.Ambiguous} ambiguous), {r.Leases} leases; {r.Faults}");
            }
        }

        var report = new RangeSimReport(options.Seeds, failed.Count, failed, sw.Elapsed, steps, ops, ambiguous, leases, leaseChanged, inconclusive);
        output.WriteLine($"ran {options.Seeds} seeds in {sw.Elapsed.TotalSeconds:F1} s ({options.Seeds / Math.Max(sw.Elapsed.TotalSeconds, 1e-9):F1} seeds/s; {steps} steps, {ops} operations ({ambiguous} ambiguous), {leases} leases, {leaseChanged} writes refused at apply for a changed lease{(inconclusive > 0 ? $", {inconclusive} key histories too large to check" : string.Empty)})");
        output.WriteLine($"seeds: {report.Seeds}, violations: {report.Violations}");
        return report;
    }

    /// <summary>The command line that replays <paramref name="seed"/> with <paramref name="options"/>.</summary>
    public static string ReplayCommand(ulong seed, RangeSimOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var d = new RangeSimOptions();
        var s = $"canopy sim ranges --seed {seed}";
        if (options.Servers != d.Servers)
        {
            s += $" --servers {options.Servers}";
        }

        if (options.Ranges != d.Ranges)
        {
            s += $" --ranges {options.Ranges}";
        }

        if (options.KeysPerRange != d.KeysPerRange)
        {
            s += $" --keys {options.KeysPerRange}";
        }

        if (options.Duration != d.Duration)
        {
            s += $" --duration {options.Duration.TotalSeconds}s";
        }

        if (!options.Faults)
        {
            s += " --no-faults";
        }

        if (options.EvaluationPauses)
        {
            s += " --evaluation-pauses";
        }

        if (!options.ServerFixes)
        {
            s += " --as-server";
        }

        if (options.HistoryCheckOnly)
        {
            s += " --history-check-only";
        }

        if (options.PlantBug is { } bug)
        {
            s += $" --plant-bug {bug}";
        }

        return s;
    }

    /// <summary>The outcome of one seed.</summary>
    public sealed record SeedResult(string? Violation, long TimeMicros, long Steps, long Operations, long Ambiguous, long Leases, long LeaseChangedWrites, int Inconclusive, string Faults);

    /// <summary>Runs one seed.</summary>
    public static SeedResult RunSeed(ulong seed, RangeSimOptions options) => new RangeSimWorld(seed, options).Run();

    internal static RangeSimBug ParseBug(string? name) => name switch
    {
        null or "" => RangeSimBug.None,
        "serve-without-margin" => RangeSimBug.ServeWithoutMargin,
        "early-takeover" => RangeSimBug.EarlyTakeover,
        "skip-sequence-check" => RangeSimBug.SkipSequenceCheck,
        "read-any-replica" => RangeSimBug.ReadAnyReplica,
        "ignore-apply-result" => RangeSimBug.IgnoreApplyResult,
        "write-ts-before-check" => RangeSimBug.WriteTimestampBeforeCheck,
        _ => throw new ArgumentException($"unknown bug '{name}' (known: {string.Join(", ", PlantableBugs)})"),
    };
}

/// <summary>Bugs that can be planted in the simulated evaluation (never in the production code).</summary>
internal enum RangeSimBug
{
    None,

    /// <summary>Serve while now &lt; expiration (no max-offset margin).</summary>
    ServeWithoutMargin,

    /// <summary>A leader takes the lease over at once, before the old one expired (as a transfer it did not get).</summary>
    EarlyTakeover,

    /// <summary>A write applies whatever lease it was evaluated under (proposed "with the current sequence at apply time").</summary>
    SkipSequenceCheck,

    /// <summary>Reads are served by any replica, without the lease.</summary>
    ReadAnyReplica,

    /// <summary>A committed write is acknowledged whatever its ApplyResult (LeaseChanged too).</summary>
    IgnoreApplyResult,

    /// <summary>A write takes its timestamp before waiting for the lease (so a stale timestamp under a new lease).</summary>
    WriteTimestampBeforeCheck,
}

/// <summary>The status of a simulated client RPC.</summary>
internal enum SimStatus
{
    Ok,
    NotLeaseholder,

    /// <summary>Retryable, and nothing was written.</summary>
    Unavailable,

    /// <summary>The write may or may not have happened.</summary>
    Ambiguous,
    BadRequest,
}

internal readonly record struct SimRequest(int Key, bool Write, long Value);

internal readonly record struct SimResponse(SimStatus Status, long Value, ulong Hint);

internal sealed class RangeSimWorld
{
    private const long Ms = 1000;
    private const long TickMicros = 50 * Ms;
    private const int ElectionTicks = 10;

    private readonly ulong _seed;
    private readonly RangeSimOptions _options;
    private readonly SimLoop _loop;
    private readonly RangeSimServer[] _servers;
    private readonly SchedulerOptions _schedulerOptions;
    private readonly List<string> _faultLog = [];
    private readonly RangeDescriptor[] _descriptors;
    private readonly List<RangeSimClient> _clients = [];
    private readonly List<RegisterOp>[] _history;
    private readonly HashSet<(ulong From, ulong To)> _cut = [];
    private double _loss;
    private double _duplicate;
    private long _delayBase;
    private long _delayJitter;
    private bool _faultsOn;
    private bool _workloadOn;
    private long _stamp;
    private long _nextValue;
    private long _operations;
    private long _ambiguous;
    private int _inconclusive;

    public RangeSimWorld(ulong seed, RangeSimOptions options)
    {
        _seed = seed;
        _options = options;
        _loop = new SimLoop(unchecked((int)(seed * 2654435761UL) ^ (int)(seed >> 32) ^ 0x5a17));
        Bug = RangeSimulation.ParseBug(options.PlantBug);
        var r = _loop.Random;
        MaxOffset = TimeSpan.FromMilliseconds(r.Next(3) switch { 0 => 100, 1 => 250, _ => 500 });
        LeaseDuration = TimeSpan.FromMilliseconds(r.Next(3) switch { 0 => 1500, 1 => 2000, _ => 3000 });
        Checker = new RangeSimChecker(MaxOffset, enforce: !options.HistoryCheckOnly);
        _schedulerOptions = new SchedulerOptions
        {
            ElectionTicks = ElectionTicks,
            HeartbeatTicks = 2,
            LivenessTicks = ElectionTicks,
            CompactionThreshold = 20 + r.Next(200),
            CompactionKeep = r.Next(10),
            QuiesceAfterHeartbeats = 2,
            MaxInflight = 4 + r.Next(64),
        };

        _descriptors = new RangeDescriptor[options.Ranges];
        _history = new List<RegisterOp>[options.Ranges * options.KeysPerRange];
        for (var k = 0; k < _history.Length; k++)
        {
            _history[k] = [];
        }

        _servers = new RangeSimServer[options.Servers];
        var amplitude = (long)(MaxOffset.TotalMicroseconds * 0.49);
        for (var i = 0; i < options.Servers; i++)
        {
            var clock = new SimClock(_loop, unchecked((int)seed ^ (i * 7919) ^ 0x2c1b), amplitude, 1000 * Ms + r.Next(2000) * Ms);
            _servers[i] = new RangeSimServer(this, (ulong)(i + 1), clock);
        }
    }

    public SimLoop Loop => _loop;

    public RangeSimChecker Checker { get; }

    public SchedulerOptions SchedulerOptions => _schedulerOptions;

    public ulong Seed => _seed;

    public RangeSimBug Bug { get; }

    public bool EvaluationPauses => _options.EvaluationPauses;

    public bool ServerFixes => _options.ServerFixes;

    public TimeSpan MaxOffset { get; }

    public TimeSpan LeaseDuration { get; }

    public bool Tracing => _options.Trace is not null;

    public void Trace(string message) => _options.Trace?.WriteLine($"{_loop.Now / 1000.0,10:F1} ms  {message}");

    /// <summary>Writes that committed but applied as LeaseChanged (their lease ended before they applied).</summary>
    public long LeaseChangedWrites { get; set; }

    public RangeSimulation.SeedResult Run()
    {
        string? violation = null;
        try
        {
            Setup();
            var faultEnd = (long)_options.Duration.TotalMicroseconds;
            _loop.RunUntil(faultEnd, static () => true);
            violation = HealAndCheckLiveness(faultEnd) ?? CheckHistories();
        }
        catch (SimViolation v)
        {
            violation = v.Message;
        }
        catch (Exception ex) when (ex is RaftInvariantException or InvalidOperationException or FormatException or ArgumentException or IndexOutOfRangeException or KeyNotFoundException or NullReferenceException)
        {
            violation = $"{ex.GetType().Name}: {ex.Message}";
        }

        return new RangeSimulation.SeedResult(violation, _loop.Now, _loop.Steps, _operations, _ambiguous, Checker.LeaseCount, LeaseChangedWrites, _inconclusive, string.Join("; ", _faultLog.Take(16)));
    }

    private void Setup()
    {
        var r = _loop.Random;
        _faultsOn = _options.Faults;
        if (_faultsOn)
        {
            _loss = r.NextDouble() < 0.3 ? 0 : r.NextDouble() * 0.1;
            _duplicate = r.NextDouble() * 0.03;
            _delayBase = 100 + r.Next(3000);
            _delayJitter = r.Next(15_000);
        }
        else
        {
            _delayBase = 200;
            _delayJitter = 500;
        }

        _faultLog.Add($"max offset {MaxOffset.TotalMilliseconds} ms, lease {LeaseDuration.TotalMilliseconds} ms");

        // Range i holds the keys starting with letter 'a'+i; 3 replicas on distinct servers (all if fewer).
        var replicas = Math.Min(3, _servers.Length);
        for (var i = 0; i < _descriptors.Length; i++)
        {
            var members = _servers.Select(s => s.Id).OrderBy(_ => r.Next()).Take(replicas).ToArray();
            var d = new RangeDescriptor((ulong)(i + 1), [(byte)('a' + i)], [(byte)('a' + i + 1)], members);
            _descriptors[i] = d;
            foreach (var id in members)
            {
                Server(id).Scheduler!.Bootstrap(d.RangeId, new ConfState(members, []), RangeStateMachine.InitialSnapshot(d));
            }
        }

        foreach (var s in _servers)
        {
            foreach (var p in _servers)
            {
                s.Scheduler!.AddPeer(p.Id);
            }

            s.StartTimers(r.Next((int)TickMicros));
        }

        // As CanopyServer's bootstrap: each range's first replica campaigns at once (spreads leadership and leases).
        foreach (var d in _descriptors)
        {
            Server(d.Replicas[0]).Campaign(d.RangeId);
        }

        var end = (long)_options.Duration.TotalMicroseconds;
        _workloadOn = true;
        var clients = 3 + r.Next(6);
        for (var c = 0; c < clients; c++)
        {
            var client = new RangeSimClient(c + 1);
            _clients.Add(client);
            _loop.After(r.Next(100) * Ms, () => NextWorkloadOp(client));
        }

        if (_faultsOn)
        {
            ScheduleFaults(end);
        }
    }

    internal RangeSimServer Server(ulong id) => _servers[(int)id - 1];

    internal RangeDescriptor Descriptor(ulong rangeId) => _descriptors[(int)rangeId - 1];

    internal ulong RangeOf(int key) => (ulong)(key / _options.KeysPerRange) + 1;

    /// <summary>Key k of range i is the letter 'a'+i followed by the digit k (within the range's span).</summary>
    internal byte[] KeyBytes(int key) => [(byte)('a' + (key / _options.KeysPerRange)), (byte)('0' + (key % _options.KeysPerRange))];

    internal string KeyName(int key) => System.Text.Encoding.ASCII.GetString(KeyBytes(key));

    // ---------------------------------------------------------------- network

    /// <summary>Raft messages between servers: loss, duplication, delay with jitter, rare long delays, cut links.</summary>
    internal void Send(ulong from, ulong to, IReadOnlyList<Message> messages)
    {
        long entries = 0;
        for (var i = 0; i < messages.Count; i++)
        {
            entries += messages[i].Entries.Length;
        }

        _loop.CountSent(messages.Count, entries); // counted before loss and cuts: the senders' work is the runaway
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

    /// <summary>Client RPC traffic (a connection: delayed, sometimes lost, never duplicated; not cut by server partitions).</summary>
    private void ClientHop(Action deliver)
    {
        if (_faultsOn && _loop.Chance(_loss / 4))
        {
            return;
        }

        _loop.After(_delayBase + _loop.Between(0, _delayJitter / 2), deliver);
    }

    // ---------------------------------------------------------------- clients and history

    private void NextWorkloadOp(RangeSimClient client)
    {
        if (!_workloadOn)
        {
            return;
        }

        var key = _loop.Random.Next(_history.Length);
        var write = _loop.Chance(0.5);
        StartOp(client, key, write, _ => _loop.After(_loop.Between(0, 30 * Ms), () => NextWorkloadOp(client)));
    }

    /// <summary>Starts an operation of <paramref name="client"/>; <paramref name="done"/> gets whether it succeeded.</summary>
    private void StartOp(RangeSimClient client, int key, bool write, Action<bool> done)
    {
        var op = new RangeSimClient.Op(key, write, write ? ++_nextValue : 0, ++_stamp, _loop.Now, _loop.Now + (10_000 * Ms), done);
        client.Current = op;
        var range = RangeOf(key);
        var target = client.Leaseholders.TryGetValue(range, out var h) && _loop.Chance(0.8) ? h : (ulong)(1 + _loop.Random.Next(_servers.Length));
        Attempt(client, op, target);
    }

    private void Attempt(RangeSimClient client, RangeSimClient.Op op, ulong target)
    {
        var attempt = ++op.Attempts;
        var request = new SimRequest(op.Key, op.Write, op.Value);
        var server = Server(target);
        ClientHop(() =>
        {
            if (server.Alive)
            {
                server.Receive(request, resp => ClientHop(() => OnResponse(client, op, attempt, target, resp)));
            }
            else
            {
                // Connection refused: the request provably never got in.
                ClientHop(() => OnResponse(client, op, attempt, target, new SimResponse(SimStatus.Unavailable, 0, 0)));
            }
        });

        var timeout = 5000 * Ms; // the client's per-attempt timeout (CanopyClient: 5 s)
        _loop.After(timeout, () =>
        {
            if (client.Current == op && op.Attempts == attempt)
            {
                client.Leaseholders.Remove(RangeOf(op.Key));
                if (op.Write)
                {
                    Finish(client, op, SimStatus.Ambiguous, 0); // no answer: the write may have been proposed
                }
                else
                {
                    Retry(client, op, RandomServer(), 0);
                }
            }
        });
    }

    private ulong RandomServer() => (ulong)(1 + _loop.Random.Next(_servers.Length));

    private void OnResponse(RangeSimClient client, RangeSimClient.Op op, int attempt, ulong server, SimResponse resp)
    {
        Trace($"c{client.Id} <- s{server} {resp.Status} hint {resp.Hint} (attempt {attempt}{(client.Current != op || op.Attempts != attempt ? ", stale" : string.Empty)})");
        if (client.Current != op || op.Attempts != attempt)
        {
            return; // a late answer to an attempt the client gave up on
        }

        var range = RangeOf(op.Key);
        switch (resp.Status)
        {
            case SimStatus.Ok:
                client.Leaseholders[range] = server;
                Finish(client, op, SimStatus.Ok, resp.Value);
                break;
            case SimStatus.NotLeaseholder:
                var hint = resp.Hint != 0 && resp.Hint != server ? resp.Hint : RandomServer();
                if (resp.Hint != 0)
                {
                    client.Leaseholders[range] = resp.Hint;
                }

                Retry(client, op, hint, op.Attempts > 20 ? _loop.Between(10 * Ms, 50 * Ms) : 0);
                break;
            case SimStatus.Unavailable:
                client.Leaseholders.Remove(range);
                Retry(client, op, _loop.Chance(0.5) ? server : RandomServer(), _loop.Between(20 * Ms, 100 * Ms));
                break;
            case SimStatus.Ambiguous:
                Finish(client, op, SimStatus.Ambiguous, 0);
                break;
            default:
                throw new SimViolation($"server s{server} rejected {(op.Write ? "a write" : "a read")} of {KeyName(op.Key)} as a bad request");
        }
    }

    /// <summary>Retries an operation that provably did not happen, until its deadline.</summary>
    private void Retry(RangeSimClient client, RangeSimClient.Op op, ulong target, long delay)
    {
        if (_loop.Now + delay >= op.Deadline)
        {
            Finish(client, op, SimStatus.Unavailable, 0);
            return;
        }

        var attempt = ++op.Attempts; // invalidate the attempt in flight while waiting
        _loop.After(delay, () =>
        {
            if (client.Current == op && op.Attempts == attempt)
            {
                Attempt(client, op, target);
            }
        });
    }

    private void Finish(RangeSimClient client, RangeSimClient.Op op, SimStatus outcome, long value)
    {
        client.Current = null;
        Trace($"c{client.Id} {(op.Write ? $"write {op.Value}" : "read")} {KeyName(op.Key)}: {outcome}{(op.Write ? string.Empty : $" {value}")} after {op.Attempts} attempts");
        var label = $"c{client.Id} t={op.InvokeTime / 1000.0:F1}..{_loop.Now / 1000.0:F1} ms";
        switch (outcome)
        {
            case SimStatus.Ok:
                _operations++;
                _history[op.Key].Add(new RegisterOp(op.Write, op.Write ? op.Value : value, op.Stamp, ++_stamp, label));
                break;
            case SimStatus.Ambiguous:
                _ambiguous++;
                _history[op.Key].Add(new RegisterOp(true, op.Value, op.Stamp, long.MaxValue, $"c{client.Id} t={op.InvokeTime / 1000.0:F1} ms, ambiguous"));
                break;
            default:
                break; // provably did nothing (or a read that got no answer): not part of the history
        }

        op.Done(outcome == SimStatus.Ok);
    }

    /// <summary>Every key's history must be linearizable (writes in flight at the end count as ambiguous).</summary>
    private string? CheckHistories()
    {
        foreach (var c in _clients)
        {
            if (c.Current is { Write: true } op)
            {
                _history[op.Key].Add(new RegisterOp(true, op.Value, op.Stamp, long.MaxValue, $"c{c.Id} t={op.InvokeTime / 1000.0:F1} ms, unfinished"));
            }
        }

        for (var k = 0; k < _history.Length; k++)
        {
            var result = RegisterLinearizability.Check(_history[k]);
            if (result.Outcome == LinearizabilityOutcome.Violation)
            {
                return $"key {KeyName(k)} (r{RangeOf(k)}): {result.Detail}{LeaseSummary(RangeOf(k))}";
            }

            if (result.Outcome == LinearizabilityOutcome.Unknown)
            {
                _inconclusive++;
            }
        }

        return null;
    }

    private string LeaseSummary(ulong range) =>
        "; leases: " + string.Join(", ", Checker.Leases(range).Select(l => $"{l.Seq}:s{l.Holder} [{(l.Start.WallNanos - (SimClock.EpochNanos)) / 1e6:F1}, {(l.Expiration.WallNanos - SimClock.EpochNanos) / 1e6:F1}) ms"));

    // ---------------------------------------------------------------- faults

    private void ScheduleFaults(long end)
    {
        var r = _loop.Random;
        var intensity = r.Next(10) switch
        {
            < 5 => 1,
            < 8 => 3,
            _ => 6,
        };
        _faultLog.Add($"intensity {intensity}, loss {_loss:P0}, dup {_duplicate:P1}, delay {_delayBase / 1000.0:F1}+{_delayJitter / 1000.0:F1} ms");
        for (var i = r.Next(4) * intensity; i > 0; i--)
        {
            _loop.At(_loop.Between(300 * Ms, end), Crash);
        }

        for (var i = r.Next(5) * intensity; i > 0; i--)
        {
            _loop.At(_loop.Between(200 * Ms, end), Partition);
        }

        for (var i = r.Next(4) * intensity; i > 0; i--)
        {
            _loop.At(_loop.Between(200 * Ms, end), ClockFault);
        }

        for (var i = r.Next(4) * intensity; i > 0; i--)
        {
            _loop.At(_loop.Between(300 * Ms, end), Transfer);
        }
    }

    private void Crash()
    {
        var alive = _servers.Where(s => s.Alive).ToArray();
        if (alive.Length == 0)
        {
            return;
        }

        // Half the crashes hit a leaseholder or leader: that is where lease bugs live.
        var leaders = alive.Where(a => a.LeadsAnything).ToArray();
        var s = leaders.Length > 0 && _loop.Chance(0.5) ? leaders[_loop.Random.Next(leaders.Length)] : alive[_loop.Random.Next(alive.Length)];
        var downtime = _loop.Chance(0.5) ? _loop.Between(20 * Ms, 600 * Ms) : _loop.Between(600 * Ms, 4000 * Ms);
        if (_loop.Chance(0.6))
        {
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

    private void CrashNow(RangeSimServer s, long downtime)
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
            // Isolate a server, preferably a leaseholder: it must stop serving before anyone else takes over.
            var holders = _servers.Where(s => s.Alive && s.HoldsAnyLease).Select(s => s.Id).ToArray();
            var x = holders.Length > 0 && r.Next(2) == 0 ? holders[r.Next(holders.Length)] : ids[r.Next(ids.Length)];
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
                _faultLog.Add($"t={_loop.Now / Ms}ms tick burst s{s.Id} +{burst}");
                s.TickBurst(burst);
                break;
            case 1:
                var stall = _loop.Between(100 * Ms, 3000 * Ms);
                _faultLog.Add($"t={_loop.Now / Ms}ms pause s{s.Id} {stall / Ms}ms");
                s.StallUntil = Math.Max(s.StallUntil, _loop.Now + stall);
                break;
            default:
                _faultLog.Add($"t={_loop.Now / Ms}ms fast ticks s{s.Id}");
                s.TickScale = 0.3 + (_loop.NextDouble() * 0.4);
                _loop.After(_loop.Between(500 * Ms, 3000 * Ms), () => s.TickScale = 1);
                break;
        }
    }

    private void Transfer()
    {
        var g = (ulong)(1 + _loop.Random.Next(_descriptors.Length));
        var leader = _servers.Where(s => s.Alive && s.Scheduler!.Node(g) is { Role: RaftRole.Leader }).OrderByDescending(s => s.Scheduler!.Node(g)!.Term).FirstOrDefault();
        if (leader?.Scheduler!.Node(g) is not { } node)
        {
            return;
        }

        var voters = node.Conf.Voters.Where(v => v != leader.Id).ToArray();
        if (voters.Length > 0)
        {
            var target = voters[_loop.Random.Next(voters.Length)];
            if (leader.TransferLeadership(g, target))
            {
                _faultLog.Add($"t={_loop.Now / Ms}ms transfer r{g} leadership s{leader.Id}->s{target}");
            }
        }
    }

    // ---------------------------------------------------------------- liveness

    /// <summary>Heals everything; every range must then get a leaseholder and serve a write and a read within 20 s.</summary>
    private string? HealAndCheckLiveness(long faultEnd)
    {
        var hadFaults = _faultsOn;
        _workloadOn = false;
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

        // Sometimes one server (preferably a leaseholder) stays down: its ranges must fail over once its leases expire.
        if (hadFaults && _servers.Length > 3 && _loop.Chance(0.5))
        {
            var holders = _servers.Where(s => s.HoldsAnyLease).ToArray();
            var victim = holders.Length > 0 ? holders[_loop.Random.Next(holders.Length)] : _servers[_loop.Random.Next(_servers.Length)];
            victim.Crash();
            _faultLog.Add($"t={_loop.Now / Ms}ms s{victim.Id} stays down");
        }

        _faultLog.Add($"t={_loop.Now / Ms}ms heal");
        var deadline = faultEnd + (20_000 * Ms);
        var done = new bool[_descriptors.Length];
        for (var i = 0; i < _descriptors.Length; i++)
        {
            var range = i;
            var client = new RangeSimClient(1000 + i);
            _clients.Add(client);
            var key = range * _options.KeysPerRange;
            void Write() => StartOp(client, key, write: true, ok =>
            {
                if (ok)
                {
                    StartOp(client, key, write: false, Read);
                }
                else if (_loop.Now < deadline)
                {
                    _loop.After(50 * Ms, Write);
                }
            });
            void Read(bool ok)
            {
                if (ok)
                {
                    done[range] = true;
                }
                else if (_loop.Now < deadline)
                {
                    _loop.After(50 * Ms, () => StartOp(client, key, write: false, Read));
                }
            }

            Write();
        }

        while (_loop.Now < deadline && !done.All(d => d))
        {
            _loop.RunUntil(_loop.Now + (100 * Ms), static () => true);
        }

        if (done.All(d => d))
        {
            return null;
        }

        var missing = Enumerable.Range(0, done.Length).Where(i => !done[i]).Select(i => _descriptors[i].RangeId);
        var detail = string.Join("; ", missing.Select(g =>
        {
            var states = _servers.Select(s => s.Describe(g));
            return $"r{g} [{string.Join(" | ", states)}]";
        }));
        return $"liveness: after healing, no leaseholder served a write and a read within 20 s: {detail}";
    }
}

/// <summary>A simulated client: one operation at a time; remembers leaseholders per range.</summary>
internal sealed class RangeSimClient(int id)
{
    public int Id { get; } = id;

    public Dictionary<ulong, ulong> Leaseholders { get; } = [];

    public Op? Current { get; set; }

    internal sealed class Op(int key, bool write, long value, long stamp, long invokeTime, long deadline, Action<bool> done)
    {
        public int Key { get; } = key;

        public bool Write { get; } = write;

        public long Value { get; } = value;

        public long Stamp { get; } = stamp;

        public long InvokeTime { get; } = invokeTime;

        public long Deadline { get; } = deadline;

        public Action<bool> Done { get; } = done;

        public int Attempts { get; set; }
    }
}

/// <summary>
/// One simulated server: engine, scheduler, HLC, and the re-implementation of CanopyServer's lease manager and
/// evaluation (see the file header). Every continuation is tied to the incarnation that scheduled it (a crash
/// forgets everything volatile) and waits out a process pause.
/// </summary>
internal sealed class RangeSimServer : ILogWriter, IRaftTransport, IStateMachineFactory
{
    private const long Ms = 1000;
    private static readonly TimeSpan ProposalTimeout = TimeSpan.FromSeconds(4); // as CanopyServer

    private readonly RangeSimWorld _world;
    private readonly MemoryEngine _engine = new();
    private readonly SimClock _time;
    private readonly Dictionary<ulong, RangeReplica> _replicas = [];
    private readonly Dictionary<ulong, SortedList<ulong, (ulong Term, Action<ProposalOutcome, ulong> Done)>> _pending = [];
    private readonly Dictionary<ulong, long> _leaseProposals = [];
    private readonly Dictionary<ulong, ulong> _recoveredLast = [];
    private readonly HashSet<int> _latched = [];
    private readonly Dictionary<int, Queue<Action>> _latchWaiters = [];
    private int _incarnation;
    private long _token;

    public RangeSimServer(RangeSimWorld world, ulong id, SimClock time)
    {
        _world = world;
        Id = id;
        _time = time;
        NewProcess();
    }

    private enum ProposalOutcome
    {
        Committed,
        Dropped,
        Ambiguous,
    }

    public ulong Id { get; }

    public bool Alive { get; private set; } = true;

    public RaftScheduler? Scheduler { get; private set; }

    public HybridClock Clock { get; private set; } = null!;

    public long StallUntil { get; set; }

    public double TickScale { get; set; } = 1;

    public Action? CrashAtNextWrite { get; set; }

    public bool LeadsAnything => Alive && Scheduler!.Groups.Any(g => Scheduler.Node(g)!.Role == RaftRole.Leader);

    public bool HoldsAnyLease => Alive && _replicas.Values.Any(r => r.Inner.Lease.Holder == Id && Clock.PhysicalNow < r.Inner.Lease.Expiration.WallNanos);

    private bool Stalled => _world.Loop.Now < StallUntil;

    // ---------------------------------------------------------------- process lifecycle

    private void NewProcess()
    {
        _replicas.Clear();
        _pending.Clear();
        _leaseProposals.Clear();
        _recoveredLast.Clear();
        _latched.Clear();
        _latchWaiters.Clear();
        Clock = new HybridClock(_time, _world.MaxOffset);
        Scheduler = new RaftScheduler(Id, _engine, this, this, this, _world.SchedulerOptions, unchecked((int)_world.Seed ^ (int)(Id * 31) ^ (_incarnation * 7)))
        {
            OnApplied = OnApplied,
        };
    }

    public int Crash()
    {
        Alive = false;
        _incarnation++;
        _replicas.Clear();
        _pending.Clear();
        Scheduler = null;
        return _engine.Crash(_world.Loop.Random);
    }

    public void Restart()
    {
        _world.Trace($"s{Id} restarts");
        Alive = true;
        _incarnation++;
        _world.Checker.OnRestart(Id);
        NewProcess();
        Scheduler!.Load();
        foreach (var g in Scheduler.Groups)
        {
            _recoveredLast[g] = Scheduler.Node(g)!.LastIndex;
        }

        StartTimers(_world.Loop.Random.Next(50_000));
    }

    public void Campaign(ulong group)
    {
        Scheduler!.Campaign(group);
        Scheduler.ProcessReady();
    }

    public bool TransferLeadership(ulong group, ulong target)
    {
        var ok = Scheduler!.TransferLeadership(group, target);
        Scheduler.ProcessReady();
        return ok;
    }

    public void TickBurst(int ticks)
    {
        for (var i = 0; i < ticks && Alive; i++)
        {
            Scheduler!.Tick();
        }
    }

    /// <summary>Runs <paramref name="action"/> now, or when the process pause ends; never in a later incarnation.</summary>
    private void Run(Action action)
    {
        var inc = _incarnation;
        if (!Alive)
        {
            return;
        }

        if (Stalled)
        {
            _world.Loop.At(StallUntil, () =>
            {
                if (Alive && inc == _incarnation)
                {
                    Run(action);
                }
            });
            return;
        }

        action();
    }

    /// <summary>Runs <paramref name="action"/> after <paramref name="delay"/> in this incarnation (after any pause).</summary>
    private void After(long delay, Action action)
    {
        var inc = _incarnation;
        _world.Loop.After(delay, () =>
        {
            if (Alive && inc == _incarnation)
            {
                Run(action);
            }
        });
    }

    /// <summary>Raft ticks (50 ms, scaled by clock faults) and the lease manager's loop (50 ms).</summary>
    public void StartTimers(long offset)
    {
        void Tick()
        {
            if (!Stalled)
            {
                Scheduler!.Tick();
            }

            After((long)(50 * Ms * TickScale), Tick);
        }

        void LeaseLoop()
        {
            foreach (var g in Scheduler!.Groups.ToArray())
            {
                if (Scheduler.Node(g) is { Role: RaftRole.Leader })
                {
                    MaybeRequestLease(g);
                }
            }

            After(50 * Ms, LeaseLoop);
        }

        After(offset, Tick);
        After(_world.Loop.Random.Next(50_000), LeaseLoop);
    }

    public void Deliver(ulong from, IReadOnlyList<Message> messages) => Run(() => Scheduler!.Receive(from, messages));

    // ILogWriter: the write is applied at once (unsynced) and becomes durable after a simulated fsync.
    void ILogWriter.Submit(WriteBatch batch)
    {
        _engine.Write(batch, sync: false);
        var loop = _world.Loop;
        var delay = loop.Chance(0.05) ? loop.Between(2_000, 30_000) : loop.Between(50, 1_500);
        if (CrashAtNextWrite is { } crash)
        {
            CrashAtNextWrite = null;
            loop.After(loop.Between(0, delay), crash);
        }

        var inc = _incarnation;
        loop.After(delay, () =>
        {
            if (Alive && inc == _incarnation)
            {
                _engine.Sync();
                Run(() => Scheduler!.OnWriteDurable());
            }
        });
    }

    void IRaftTransport.Send(ulong server, IReadOnlyList<Message> messages) => _world.Send(Id, server, messages);

    IReplicaStateMachine IStateMachineFactory.Open(ulong group, IStorageEngine engine)
    {
        var replica = new RangeReplica(this, group, new RangeStateMachine(group, engine));
        _replicas[group] = replica;
        if (replica.Inner.Applied > 0)
        {
            // Recovered from the engine after a crash: the same state as every replica had after that index.
            _world.Checker.OnReplicaState(Id, group, replica.Inner.Applied, replica.Inner.Lease, null, "recovery");
        }

        return replica;
    }

    void IStateMachineFactory.Destroyed(ulong group) => _replicas.Remove(group);

    /// <summary>Proposal tracking, as RaftHost.OnApplied: Committed if (index, term) applied, Dropped if another entry took the index, Ambiguous if skipped.</summary>
    private void OnApplied(ulong group, Entry entry)
    {
        if (!_pending.TryGetValue(group, out var list))
        {
            return;
        }

        while (list.Count > 0 && list.Keys[0] <= entry.Index)
        {
            var index = list.Keys[0];
            var (term, done) = list.Values[0];
            list.RemoveAt(0);
            var status = index < entry.Index ? ProposalOutcome.Ambiguous
                : term == entry.Term ? ProposalOutcome.Committed
                : ProposalOutcome.Dropped;
            done(status, index);
        }
    }

    /// <summary>Proposes and tracks the outcome; false if refused at once (NotLeader, TransferInProgress).</summary>
    private bool Propose(ulong group, byte[] data, Action<ProposalOutcome, ulong> done)
    {
        var res = Scheduler!.Propose(group, data);
        if (!res.Ok)
        {
            Scheduler.ProcessReady();
            return false;
        }

        if (!_pending.TryGetValue(group, out var list))
        {
            list = [];
            _pending[group] = list;
        }

        list[res.Index] = (res.Term, done);
        Scheduler.ProcessReady();
        return true;
    }

    // ---------------------------------------------------------------- lease manager (CanopyServer.MaybeRequestLease)

    private void MaybeRequestLease(ulong group)
    {
        if (!_replicas.TryGetValue(group, out var replica) || replica.Inner.Descriptor is null || _leaseProposals.ContainsKey(group))
        {
            return;
        }

        var sm = replica.Inner;
        var lease = sm.Lease;
        var now = Clock.Now();
        var duration = _world.LeaseDuration;
        RangeCommand.LeaseCommand cmd;
        if (lease.Holder == Id)
        {
            if (lease.Expiration.WallNanos - now.WallNanos > duration.Ticks * 100 / 2)
            {
                return;
            }

            cmd = new RangeCommand.LeaseCommand(lease with { Expiration = now.Add(duration) }, lease.Sequence, Transfer: false);
        }
        else if (now.CompareTo(lease.Expiration) > 0)
        {
            cmd = new RangeCommand.LeaseCommand(new Lease(Id, now, now.Add(duration), 0), lease.Sequence, Transfer: false);
        }
        else if (_world.Bug == RangeSimBug.EarlyTakeover)
        {
            cmd = new RangeCommand.LeaseCommand(new Lease(Id, now, now.Add(duration), 0), lease.Sequence, Transfer: true);
        }
        else
        {
            return; // another holder's lease is still running: wait for it to expire
        }

        var token = ++_token;
        _leaseProposals[group] = token;
        void Forget()
        {
            if (_leaseProposals.TryGetValue(group, out var t) && t == token)
            {
                _leaseProposals.Remove(group);
            }
        }

        if (!Propose(group, cmd.Encode(), (_, _) => Forget()))
        {
            Forget();
            return;
        }

        After((long)duration.TotalMicroseconds, Forget);
    }

    // ---------------------------------------------------------------- evaluation (CanopyServer.GetAsync / WriteAsync)

    /// <summary>A client request arrived; <paramref name="reply"/> sends the answer (only from this incarnation).</summary>
    public void Receive(SimRequest req, Action<SimResponse> reply) => Run(() => Handle(req, reply));

    private void Handle(SimRequest req, Action<SimResponse> reply)
    {
        var group = _world.RangeOf(req.Key);
        if (!_replicas.TryGetValue(group, out var replica) || replica.Inner.Descriptor is null)
        {
            reply(new SimResponse(SimStatus.NotLeaseholder, 0, _world.Descriptor(group).Replicas[0]));
            return;
        }

        var sm = replica.Inner;
        if (_world.ServerFixes && _recoveredLast.TryGetValue(group, out var recovered))
        {
            // The fix: after a restart, serve only once the replica applied (up to) the end of the log it
            // recovered. Every write it acknowledged before the crash is in that log, but the crash may have lost
            // its apply, and even the commit index that allows it (the commit index is written unsynced).
            if (sm.Applied < recovered)
            {
                reply(new SimResponse(SimStatus.Unavailable, 0, 0));
                return;
            }

            _recoveredLast.Remove(group);
        }

        var key = _world.KeyBytes(req.Key);
        Latch(req.Key, () =>
        {
            void Respond(SimResponse r)
            {
                reply(r);
                Unlatch(req.Key);
            }

            if (!req.Write && _world.Bug == RangeSimBug.ReadAnyReplica)
            {
                var ts0 = Clock.Now();
                var v0 = sm.Mvcc.Get(key, ts0);
                Respond(new SimResponse(SimStatus.Ok, v0.IsFound ? BinaryPrimitives.ReadInt64LittleEndian(v0.Value!.Bytes) : 0, 0));
                return;
            }

            var early = req.Write && _world.Bug == RangeSimBug.WriteTimestampBeforeCheck ? Clock.Now() : (HlcTimestamp?)null;
            var deadline = _world.Loop.Now + (long)(_world.LeaseDuration + TimeSpan.FromSeconds(1)).TotalMicroseconds;
            EnsureLease(group, sm, deadline, Respond, (lease, checkedAt) =>
            {
                if (_world.EvaluationPauses && _world.Loop.Chance(0.02))
                {
                    // A GC pause or preemption between the lease check and the timestamp.
                    StallUntil = Math.Max(StallUntil, _world.Loop.Now + _world.Loop.Between(0, 2 * (long)_world.MaxOffset.TotalMicroseconds));
                    Run(() => Evaluate(group, sm, req, key, lease, checkedAt, early, deadline, Respond));
                }
                else
                {
                    Evaluate(group, sm, req, key, lease, checkedAt, early, deadline, Respond);
                }
            });
        });
    }

    private void Evaluate(ulong group, RangeStateMachine sm, SimRequest req, byte[] key, Lease lease, HlcTimestamp checkedAt, HlcTimestamp? early, long deadline, Action<SimResponse> respond)
    {
        var ts = early ?? Clock.Now();
        if (_world.ServerFixes && early is null)
        {
            // The fix: the lease is checked at the request's own timestamp (and its lease read again).
            lease = sm.Lease;
            if (!CanServe(lease, ts))
            {
                // EnsureLease checks at a later HLC time, so it does not pass at once where this failed.
                EnsureLease(group, sm, deadline, respond, (l, c) => Evaluate(group, sm, req, key, l, c, early, deadline, respond));
                return;
            }

            checkedAt = ts;
        }

        _world.Trace($"s{Id} serves {(req.Write ? $"write {req.Value}" : "read")} of {_world.KeyName(req.Key)} at {ts} under lease {lease.Sequence} (applied {sm.Applied}, committed {Scheduler!.Node(group)?.Committed})");
        if (!req.Write)
        {
            _world.Checker.OnServe(Id, group, lease, checkedAt, ts, _world.Loop.Now, $"a read of {_world.KeyName(req.Key)}");
            var v = sm.Mvcc.Get(key, ts);
            respond(new SimResponse(SimStatus.Ok, v.IsFound ? BinaryPrimitives.ReadInt64LittleEndian(v.Value!.Bytes) : 0, 0));
            return;
        }

        var value = new byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(value, req.Value);
        var cmd = new RangeCommand.WriteCommand(lease.Sequence, [new MvccWrite(key, ts, value)]);
        var resolved = false;
        void Resolve(SimResponse r)
        {
            if (!resolved)
            {
                resolved = true;
                respond(r);
            }
        }

        var proposed = Propose(group, cmd.Encode(), (outcome, index) =>
        {
            // Called from inside the scheduler's apply: answer (and release the latch) from a fresh event.
            var response = outcome switch
            {
                ProposalOutcome.Committed => (_world.Bug == RangeSimBug.IgnoreApplyResult ? ApplyResult.Applied : sm.TakeResult(index)) switch
                {
                    ApplyResult.Applied => new SimResponse(SimStatus.Ok, 0, 0),
                    ApplyResult.LeaseChanged => new SimResponse(SimStatus.Unavailable, 0, 0),
                    _ => new SimResponse(SimStatus.BadRequest, 0, 0),
                },
                ProposalOutcome.Dropped => new SimResponse(SimStatus.Unavailable, 0, 0),
                _ => new SimResponse(SimStatus.Ambiguous, 0, 0),
            };
            if (response.Status == SimStatus.Unavailable && outcome == ProposalOutcome.Committed)
            {
                _world.LeaseChangedWrites++;
            }

            After(0, () => Resolve(response));
        });
        if (!proposed)
        {
            Resolve(new SimResponse(SimStatus.Unavailable, 0, 0)); // NotLeader / TransferInProgress: nothing was written
            return;
        }

        After((long)ProposalTimeout.TotalMicroseconds, () => Resolve(new SimResponse(SimStatus.Ambiguous, 0, 0)));
    }

    /// <summary>The serving rule, Lease.CanServe(me, now, maxOffset) (without the margin when that bug is planted).</summary>
    private bool CanServe(Lease lease, HlcTimestamp now) =>
        lease.CanServe(Id, now, _world.Bug == RangeSimBug.ServeWithoutMargin ? TimeSpan.FromTicks(1) : _world.MaxOffset);

    /// <summary>CanopyServer.EnsureLeaseAsync: serve, redirect, or (as the leader) ask for the lease and retry every 10 ms.</summary>
    private void EnsureLease(ulong group, RangeStateMachine sm, long deadline, Action<SimResponse> fail, Action<Lease, HlcTimestamp> serve)
    {
        var now = Clock.Now();
        var lease = sm.Lease;
        if (CanServe(lease, now))
        {
            serve(lease, now);
            return;
        }

        var node = Scheduler!.Node(group);
        var iLead = node?.Role == RaftRole.Leader;
        if (lease.Holder != Id && lease.Holder != 0 && now.CompareTo(lease.Expiration) < 0 && !iLead)
        {
            fail(new SimResponse(SimStatus.NotLeaseholder, 0, lease.Holder));
            return;
        }

        if (!iLead && node?.Leader is { } leader && leader != 0 && leader != Id)
        {
            fail(new SimResponse(SimStatus.NotLeaseholder, 0, leader));
            return;
        }

        if (_world.Loop.Now > deadline)
        {
            fail(new SimResponse(SimStatus.Unavailable, 0, 0));
            return;
        }

        if (iLead)
        {
            MaybeRequestLease(group);
        }

        After(10 * Ms, () => EnsureLease(group, sm, deadline, fail, serve));
    }

    // ---------------------------------------------------------------- latches (one operation per key at a time)

    private void Latch(int key, Action action)
    {
        if (_latched.Add(key))
        {
            action();
            return;
        }

        if (!_latchWaiters.TryGetValue(key, out var q))
        {
            q = new Queue<Action>();
            _latchWaiters[key] = q;
        }

        q.Enqueue(action);
    }

    private void Unlatch(int key)
    {
        if (_latchWaiters.TryGetValue(key, out var q) && q.Count > 0)
        {
            After(0, q.Dequeue()); // hand the latch over, from a fresh event
            return;
        }

        _latched.Remove(key);
    }

    public string Describe(ulong group)
    {
        if (!Alive)
        {
            return $"s{Id}:down";
        }

        if (Scheduler!.Node(group) is not { } n || !_replicas.TryGetValue(group, out var r))
        {
            return $"s{Id}:-";
        }

        return $"s{Id}:{n.Role}/t{n.Term}/c{n.Committed}/a{n.Applied} lease {RangeSimChecker.Show(r.Inner.Lease)} clock {Clock.PhysicalNow}";
    }

    /// <summary>The range state machine of one replica, reporting every state it reaches to the checker.</summary>
    private sealed class RangeReplica : IReplicaStateMachine
    {
        private readonly RangeSimServer _server;
        private readonly ulong _group;
        private readonly byte[] _leaseKey;
        private ApplyResult _last;

        public RangeReplica(RangeSimServer server, ulong group, RangeStateMachine inner)
        {
            _server = server;
            _group = group;
            _leaseKey = RangeKeys.Lease(group);
            Inner = inner;
            AppliedLease = inner.Lease; // as recovered: applied and published are the same
            inner.OnCommandApplied = (_, r) => _last = r;
        }

        public RangeStateMachine Inner { get; }

        public ulong Applied => Inner.Applied;

        /// <summary>
        /// The lease as applied so far (the apply-time checks use it). <see cref="RangeStateMachine.Lease"/>, what the
        /// evaluation serves under, is published only after the apply batch is written (<see cref="Written"/>).
        /// Taken from the lease the apply wrote into the batch.
        /// </summary>
        public Lease AppliedLease { get; private set; }

        public void Written() => Inner.Written();

        public void Apply(in Entry entry, WriteBatch batch)
        {
            var e = entry;
            if (_server._world.Bug == RangeSimBug.SkipSequenceCheck && e.Type == EntryType.Normal && e.Data.Length > 0 && e.Data.Span[0] == 1)
            {
                // Planted: the write goes through under whatever lease is in force when it applies.
                var w = (RangeCommand.WriteCommand)RangeCommand.Decode(e.Data.Span);
                e = e with { Data = (w with { LeaseSequence = AppliedLease.Sequence }).Encode() };
            }

            _last = ApplyResult.Applied;
            var before = AppliedLease;
            var ops = batch.Count;
            Inner.Apply(e, batch);
            for (var i = ops; i < batch.Count; i++)
            {
                if (batch.Ops[i] is { Kind: WriteBatch.OpKind.Put, Value: { } v } op && op.Key.AsSpan().SequenceEqual(_leaseKey))
                {
                    AppliedLease = Lease.Decode(v);
                }
            }

            if (_last == ApplyResult.Applied && e.Type == EntryType.Normal && e.Data.Length > 0 && e.Data.Span[0] == 1
                && RangeCommand.Decode(e.Data.Span) is RangeCommand.WriteCommand { Writes: [var written, ..] })
            {
                // A write that took effect: its timestamp is where it was served.
                _server._world.Checker.OnWriteApplied(_server.Id, _group, entry.Index, AppliedLease, written.Timestamp, _server._world.Loop.Now);
            }

            if (_server._world.Tracing)
            {
                _server._world.Trace($"s{_server.Id} r{_group} applied {entry.Index}/{entry.Term} ({(e.Data.Length == 0 ? "empty" : e.Type == EntryType.Normal ? (e.Data.Span[0] == 1 ? "write" : "lease") : e.Type.ToString())}): {_last}");
            }

            if (AppliedLease != before)
            {
                _server._world.Trace($"s{_server.Id} r{_group} index {entry.Index}: lease {RangeSimChecker.Show(AppliedLease)}");
            }

            _server._world.Checker.OnReplicaState(_server.Id, _group, entry.Index, AppliedLease, _last, "apply");
        }

        public void Install(Snapshot snapshot, WriteBatch batch)
        {
            Inner.Install(snapshot, batch);
            AppliedLease = Inner.Lease; // a snapshot publishes its lease at once
            _server._world.Checker.OnReplicaState(_server.Id, _group, snapshot.Meta.Index, AppliedLease, null, "snapshot");
        }

        public (ulong Index, ReadOnlyMemory<byte> Data) Capture() => Inner.Capture();
    }
}
