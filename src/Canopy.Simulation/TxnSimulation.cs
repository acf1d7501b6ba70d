// The transaction simulation: our coordinator and replica code, deterministic, with a lossy network and crashes
// ==========================================================================================================
//
// What runs: the production TxnCoordinator (gateway side) and TxnReplica (leaseholder side: latches, timestamp cache,
// intents, records, pushes, wait queue, deadlock detection, status recovery, resolution, refresh) on simulated
// servers, each with a MemoryEngine and RangeStateMachines. Every range's commands go through a deterministic log:
// proposals are applied in log order after a random replication delay, then written, then acknowledged (as RaftHost
// does). All async code runs on one thread: a SynchronizationContext over SimLoop's event queue and a TimeProvider
// over its virtual clock (Task.Delay, timers, heartbeats); the only randomness is the seed's Random. A seed replays
// exactly.
//
// Faults: requests and replies between servers are lost (the sender retries after an attempt timeout, so a request
// may execute twice, as with the real router) or delayed; coordinators crash at a random fault point of the commit
// path (they stop dead; what they already sent still arrives); servers' clocks differ within the max offset.
//
// Workload: client loops run bank transfers between accounts on different ranges (parallel commits, sometimes
// pipelined writes, sometimes two-phase), recording what each read and its outcome.
//
// Checks, after healing and a sweep (a transaction that reads every account once every abandoned record expired):
// - serializability: every committed transfer, replayed in commit-timestamp order, read exactly what the transfers
//   before it left (crashed and ambiguous ones count as committed iff their record says COMMITTED), and the replayed
//   balances equal what the sweep read; the total is unchanged;
// - outcomes: no transfer the client was told "aborted" is committed;
// - recovery: no intent is left on any account, and no record is left PENDING or STAGING with intents;
// - liveness: the sweep commits.
namespace Canopy.Simulation;

using System.Globalization;
using System.Text;
using Canopy.Clock;
using Canopy.Host;
using Canopy.Mvcc;
using Canopy.Ranges;
using Canopy.Replication.Raft;
using Canopy.Rpc;
using Canopy.Server;
using Canopy.Storage;
using Canopy.Txn;

/// <summary>Settings of <c>canopy sim txn</c>.</summary>
public sealed record TxnSimOptions
{
    public int Seeds { get; init; } = 20;

    public ulong FirstSeed { get; init; } = 1;

    public int Servers { get; init; } = 3;

    public int Accounts { get; init; } = 12;

    public int Clients { get; init; } = 5;

    /// <summary>Virtual time the clients run transfers.</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(6);

    /// <summary>Probability that a request or a reply between servers is lost.</summary>
    public double Loss { get; init; } = 0.03;

    /// <summary>Probability that a transaction's coordinator crashes at a random point of its commit.</summary>
    public double CrashRate { get; init; } = 0.05;

    public TxnBugs Bugs { get; init; }
}

/// <summary>The outcome of one seed.</summary>
public sealed record TxnSimResult(ulong Seed, string? Violation, long Steps, int Committed, int Aborted, int Ambiguous, int Crashed);

/// <summary>Runs the transaction simulation (see the file header).</summary>
public static class TxnSimulation
{
    /// <summary>Runs one seed.</summary>
    public static TxnSimResult RunSeed(ulong seed, TxnSimOptions options)
    {
        var world = new TxnWorld(seed, options);
        return world.Run();
    }

    /// <summary>Runs <see cref="TxnSimOptions.Seeds"/> seeds on every core; returns them in seed order.</summary>
    public static List<TxnSimResult> Run(TxnSimOptions options, Action<TxnSimResult>? onResult = null)
    {
        var results = new TxnSimResult[options.Seeds];
        Parallel.For(0, options.Seeds, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, i =>
        {
            var r = RunSeed(options.FirstSeed + (ulong)i, options);
            results[i] = r;
            onResult?.Invoke(r);
        });
        return results.ToList();
    }
}

/// <summary>One seed's world.</summary>
internal sealed class TxnWorld
{
    private const long Ms = 1000; // SimLoop time is in microseconds
    private static readonly string[] Letters = ["b", "f", "j", "o", "s", "w"];
    private static readonly string[] CrashPoints =
    [
        "coordinator.before-commit", "coordinator.before-stage", "coordinator.stage-sent", "coordinator.stage-sent", "coordinator.after-stage", "coordinator.after-implicit-commit",
        "coordinator.before-finalize", "coordinator.before-resolve", "coordinator.before-end", "coordinator.after-commit",
    ];

    private readonly ulong _seed;
    private readonly TxnSimOptions _options;
    private readonly SimLoop _loop;
    private readonly SimTime _time;
    private readonly SimContext _context;
    private readonly List<SimTxnServer> _servers = [];
    private readonly List<RangeDescriptor> _layout = [];
    private readonly byte[][] _accounts;
    private readonly List<Transfer> _transfers = [];
    private double _loss;
    private string? _violation;

    public TxnWorld(ulong seed, TxnSimOptions options)
    {
        _seed = seed;
        _options = options;
        _loop = new SimLoop(unchecked((int)seed ^ (int)(seed >> 32)));
        _time = new SimTime(_loop);
        _context = new SimContext(_loop);
        _loss = options.Loss;
        _accounts = Enumerable.Range(0, options.Accounts).Select(i => Encoding.ASCII.GetBytes($"{Letters[i % Letters.Length]}acct/{i:D3}")).ToArray();
    }

    public SimLoop Loop => _loop;

    public TxnSimOptions Options => _options;

    public SimTime Time => _time;

    public double Loss => _loss;

    public IReadOnlyList<RangeDescriptor> Layout => _layout;

    public IReadOnlyList<SimTxnServer> Servers => _servers;

    public TxnSimResult Run()
    {
        var previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(_context);
        try
        {
            Build();
            var main = MainAsync();
            var limit = _options.Duration + TimeSpan.FromSeconds(120);
            while (!main.IsCompleted && _violation is null)
            {
                if (!_loop.RunUntil(_loop.Now + (100 * Ms), () => _violation is null && _context.Failure is null))
                {
                    break;
                }

                if (_context.Failure is { } f)
                {
                    _violation = $"unhandled exception in the simulation: {f}";
                }

                if (_loop.Now > (long)limit.TotalMilliseconds * Ms)
                {
                    _violation ??= $"liveness: the run did not finish within {limit.TotalSeconds:0} s of virtual time";
                }

                if (_loop.Pending == 0 && !main.IsCompleted)
                {
                    _violation ??= $"liveness: nothing left to run but the workload is not done (a task waits forever); latches: {string.Join(" | ", _servers.Select(s => $"s{s.Id} ({s.ProposalsDone}/{s.ProposalsStarted} proposals): {s.Latches.Describe()}"))}{(_context.Failure is { } why ? $"; {why.Message}" : string.Empty)}";
                }
            }

            if (_context.Failure is { } failure)
            {
                _violation ??= $"unhandled exception in the simulation: {failure}";
            }

            if (main.IsFaulted)
            {
                _violation ??= $"the simulation failed: {main.Exception!.GetBaseException()}";
            }
        }
        catch (SimViolation e)
        {
            _violation ??= e.Message;
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        return new TxnSimResult(
            _seed,
            _violation,
            _loop.Steps,
            _transfers.Count(t => t.Outcome == "committed"),
            _transfers.Count(t => t.Outcome == "aborted"),
            _transfers.Count(t => t.Outcome == "ambiguous"),
            _transfers.Count(t => t.Outcome == "crashed"));
    }

    private void Build()
    {
        // Ranges split at the letters' boundaries (as the default cluster: e, i, n, r, v), spread over the servers.
        var starts = new List<byte[]> { new byte[] { 0x01 } };
        starts.AddRange("einrv".Select(c => new byte[] { (byte)c }));
        for (var i = 0; i < starts.Count; i++)
        {
            _layout.Add(new RangeDescriptor((ulong)(i + 2), starts[i], i + 1 < starts.Count ? starts[i + 1] : null, [(ulong)((i % _options.Servers) + 1)]));
        }

        for (var s = 1; s <= _options.Servers; s++)
        {
            // Clock offsets within half the max offset (each pair stays within it).
            var offset = TimeSpan.FromMilliseconds(_loop.Random.Next(0, 200));
            _servers.Add(new SimTxnServer(this, (ulong)s, offset, _layout.Where(d => d.Replicas[0] == (ulong)s).ToList()));
        }
    }

    public SimTxnServer Leaseholder(byte[] key) => _servers[(int)_layout.First(d => d.Contains(key)).Replicas[0] - 1];

    /// <summary>A random delay of a message between servers.</summary>
    public TimeSpan NetworkDelay() => TimeSpan.FromMicroseconds(_loop.Random.Next(200, 8000));

    private async Task MainAsync()
    {
        // Open the accounts.
        var opener = await RunTxnAsync(_servers[0], new TxnSettings(), async c =>
        {
            foreach (var a in _accounts)
            {
                await c.WriteAsync(a, V(100), CancellationToken.None);
            }
        }, crashAt: null);
        if (opener.Outcome != "committed")
        {
            _violation = $"could not open the accounts: {opener.Outcome} {opener.Reason}";
            return;
        }

        var end = _time.GetUtcNow() + _options.Duration;
        var clients = Enumerable.Range(0, _options.Clients).Select(i => ClientLoopAsync(end)).ToList();
        await Task.WhenAll(clients);

        // Heal, let every abandoned record expire, then sweep: one transaction reads every account.
        _loss = 0;
        await Task.Delay(TxnReplica.TxnExpiry + TimeSpan.FromSeconds(1), _time);
        long[]? balances = null;
        for (var attempt = 0; attempt < 30 && balances is null; attempt++)
        {
            var read = new long[_accounts.Length];
            var r = await RunTxnAsync(_servers[attempt % _servers.Count], new TxnSettings(), async c =>
            {
                for (var i = 0; i < _accounts.Length; i++)
                {
                    read[i] = L(await c.GetAsync(_accounts[i], CancellationToken.None));
                }
            }, crashAt: null);
            if (r.Outcome == "committed")
            {
                balances = read;
            }
        }

        if (balances is null)
        {
            _violation = "liveness: the sweep never committed";
            return;
        }

        await Task.Delay(TimeSpan.FromSeconds(3), _time); // let finalisations finish
        _violation ??= Check(balances);
    }

    private async Task ClientLoopAsync(DateTimeOffset end)
    {
        var rng = _loop.Random;
        while (_time.GetUtcNow() < end)
        {
            var from = rng.Next(_accounts.Length);
            var to = rng.Next(_accounts.Length);
            if (from % Letters.Length == to % Letters.Length)
            {
                continue; // transfers cross ranges (no one-phase commits: a crashed one would leave no trace to judge)
            }

            var amount = rng.Next(1, 30);
            var settings = new TxnSettings
            {
                ParallelCommits = rng.NextDouble() < 0.85,
                PipelineWrites = rng.NextDouble() < 0.3,
            };
            var crashAt = rng.NextDouble() < _options.CrashRate ? CrashPoints[rng.Next(CrashPoints.Length)] : null;
            var gateway = _servers[rng.Next(_servers.Count)];
            long a = 0, b = 0;
            var wrote = false;
            var t = await RunTxnAsync(gateway, settings, async c =>
            {
                a = L(await c.GetAsync(_accounts[from], CancellationToken.None));
                b = L(await c.GetAsync(_accounts[to], CancellationToken.None));
                if (a >= amount)
                {
                    await c.WriteAsync(_accounts[from], V(a - amount), CancellationToken.None);
                    await c.WriteAsync(_accounts[to], V(b + amount), CancellationToken.None);
                    wrote = true;
                }
            }, crashAt);
            _transfers.Add(t with { From = from, To = to, ReadFrom = a, ReadTo = b, Amount = amount, Wrote = wrote });
            await Task.Delay(TimeSpan.FromMilliseconds(rng.Next(0, 5)), _time);
        }
    }

    /// <summary>Runs one transaction on a coordinator at <paramref name="gateway"/>.</summary>
    private async Task<Transfer> RunTxnAsync(SimTxnServer gateway, TxnSettings settings, Func<TxnCoordinator, Task> body, string? crashAt)
    {
        var env = new TxnEnvironment
        {
            Time = _time,
            Spawn = work => work(),
            Random = _loop.Random,
            Faults = crashAt is null ? null : p => p == crashAt ? throw new InjectedCrash(p) : Task.CompletedTask,
            Bugs = _options.Bugs,
        };
        var c = new TxnCoordinator(new SimSender(gateway), gateway.Clock, settings, env: env);
        try
        {
            await body(c);
            var r = await c.CommitAsync(CancellationToken.None);
            return new Transfer(c.Meta.Id, c.Meta.Anchor, r.Outcome switch
            {
                TxnOutcome.Committed => "committed",
                TxnOutcome.Aborted => "aborted",
                _ => "ambiguous",
            }, r.Reason, r.CommitTimestamp);
        }
        catch (TxnRetryException e)
        {
            await c.RollbackAsync();
            return new Transfer(c.Meta.Id, c.Meta.Anchor, "aborted", e.Message, HlcTimestamp.Zero);
        }
        catch (InjectedCrash e)
        {
            return new Transfer(c.Meta.Id, c.Meta.Anchor, "crashed", e.Point, HlcTimestamp.Zero);
        }
    }

    private string? Check(long[] balances)
    {
        // Decide crashed and ambiguous transfers by their records.
        var history = new List<(HlcTimestamp Ts, Transfer T)>();
        foreach (var t in _transfers)
        {
            var status = t.Anchor.Length == 0 ? null : Leaseholder(t.Anchor).RecordOf(t.Anchor, t.Id);
            switch (t.Outcome)
            {
                case "committed":
                    history.Add((t.CommitTs, t));
                    break;
                case "aborted" when status is { Status: TxnStatus.Committed }:
                    return $"outcome: transfer {t.Id} was reported aborted ({t.Reason}) but its record says COMMITTED";
                case "crashed" or "ambiguous" when status is { Status: TxnStatus.Committed } rec:
                    history.Add((rec.WriteTimestamp, t));
                    break;
            }
        }

        var state = Enumerable.Repeat(100L, _accounts.Length).ToArray();
        foreach (var (ts, t) in history.OrderBy(h => h.Ts))
        {
            if (state[t.From] != t.ReadFrom || state[t.To] != t.ReadTo)
            {
                return $"serializability: transfer {t.Id} ({t.Outcome}) at {ts} read {t.ReadFrom}/{t.ReadTo} of accounts {t.From}/{t.To}, but in commit order they held {state[t.From]}/{state[t.To]}";
            }

            if (t.Wrote)
            {
                state[t.From] -= t.Amount;
                state[t.To] += t.Amount;
            }
        }

        for (var i = 0; i < _accounts.Length; i++)
        {
            if (state[i] != balances[i])
            {
                return $"serializability: account {i} holds {balances[i]}, but the committed transfers in commit order leave {state[i]}";
            }
        }

        if (balances.Sum() != 100L * _accounts.Length)
        {
            return $"invariant: the total is {balances.Sum()}, not {100L * _accounts.Length}";
        }

        foreach (var s in _servers)
        {
            if (s.IntentsOn(_accounts) is { Count: > 0 } left)
            {
                return $"recovery: {left.Count} intents left after the sweep, e.g. txn {left[0]} on server {s.Id}";
            }
        }

        return null;
    }

    private static byte[] V(long v) => Encoding.ASCII.GetBytes(v.ToString(CultureInfo.InvariantCulture));

    private static long L(byte[]? b) => b is null ? 0 : long.Parse(Encoding.ASCII.GetString(b), CultureInfo.InvariantCulture);

    public void Fail(string violation) => _violation ??= violation;

    private sealed record Transfer(Guid Id, byte[] Anchor, string Outcome, string? Reason, HlcTimestamp CommitTs)
    {
        public int From { get; init; }

        public int To { get; init; }

        public long ReadFrom { get; init; }

        public long ReadTo { get; init; }

        public long Amount { get; init; }

        public bool Wrote { get; init; }
    }

    private sealed class SimSender(SimTxnServer gateway) : ITxnSender
    {
        public Task<RpcResponse> SendAsync(RpcRequest request, byte[] routeKey, CancellationToken ct) => gateway.RouteAsync(request, routeKey, ct);

        public Task<(byte[] Start, byte[]? End)> RangeOfAsync(byte[] key, CancellationToken ct)
        {
            var d = gateway.World.Layout.First(d => d.Contains(key));
            return Task.FromResult((d.StartKey, d.EndKey));
        }
    }
}

/// <summary>A simulated server: its ranges (one replica each, on a deterministic log), latches, clock and TxnReplica.</summary>
internal sealed class SimTxnServer : IReplicaHost
{
    /// <summary>How long a sender waits for a lost request's answer before trying again (the router's attempt timeout, scaled down).</summary>
    private static readonly TimeSpan AttemptTimeout = TimeSpan.FromMilliseconds(400);

    private readonly MemoryEngine _engine = new();
    private readonly Dictionary<ulong, RangeStateMachine> _ranges = [];
    private readonly Dictionary<ulong, (ulong NextIndex, long LastApplyAt)> _logs = [];
    private readonly TxnReplica _replica;

    public SimTxnServer(TxnWorld world, ulong id, TimeSpan clockOffset, List<RangeDescriptor> ranges)
    {
        World = world;
        Id = id;
        Clock = new HybridClock(new OffsetTime(world.Time, clockOffset), HybridClock.DefaultMaxOffset);
        foreach (var d in ranges)
        {
            var sm = new RangeStateMachine(d.RangeId, _engine);
            var batch = new WriteBatch();
            sm.Install(new Snapshot(new SnapshotMeta(1, 1, new ConfState([id], [])), RangeStateMachine.InitialSnapshot(d)), batch);
            var lease = new RangeCommand.LeaseCommand(new Lease(id, new HlcTimestamp(1, 0), HlcTimestamp.MaxValue, 0), 0, false);
            sm.Apply(new Entry(2, 1, EntryType.Normal, lease.Encode()), batch);
            _engine.Write(batch, sync: true);
            sm.Written();
            _ranges[d.RangeId] = sm;
            _logs[d.RangeId] = (3, 0);
        }

        _replica = new TxnReplica(this);
    }

    public TxnWorld World { get; }

    public ulong Id { get; }

    public HybridClock Clock { get; }

    public TimeSpan MaxOffset => HybridClock.DefaultMaxOffset;

    public TimeProvider Time => World.Time;

    public KeyLatches Latches { get; } = new();

    public CancellationToken Stopping => CancellationToken.None;

    public TxnBugs Bugs => World.Options.Bugs;

    public (RangeStateMachine? Sm, RpcResponse? Error) Locate(byte[] key)
    {
        foreach (var sm in _ranges.Values)
        {
            if (sm.Descriptor!.Contains(key))
            {
                return (sm, null);
            }
        }

        var holder = World.Leaseholder(key).Id;
        return (null, RpcResponse.Fail(RpcErrorCode.NotLeaseholder, $"not here: node {holder}", holder));
    }

    public Task<(Lease? Lease, HlcTimestamp Timestamp, RpcResponse? Error)> EnsureLeaseAsync(RangeStateMachine sm, CancellationToken ct) =>
        Task.FromResult<(Lease?, HlcTimestamp, RpcResponse?)>((sm.Lease, Clock.Now(), null));

    /// <summary>The deterministic log: entries apply in order, each after a random replication delay.</summary>
    public int ProposalsStarted;
    public int ProposalsDone;

    public Task<ProposeOutcome> ProposeAsync(ulong rangeId, byte[] command, CancellationToken ct)
    {
        ProposalsStarted++;
        var tcs = new TaskCompletionSource<ProposeOutcome>();
        var (index, last) = _logs[rangeId];
        var at = Math.Max(last, World.Loop.Now + World.Loop.Random.Next(300, 3000));
        _logs[rangeId] = (index + 1, at);
        var sm = _ranges[rangeId];
        World.Loop.At(at, () =>
        {
            var batch = new WriteBatch();
            sm.Apply(new Entry(index, 1, EntryType.Normal, command), batch);
            _engine.Write(batch, sync: false);
            sm.Written();
            ProposalsDone++;
            tcs.SetResult(new ProposeOutcome(ProposeOutcomeStatus.Committed, index, 1, 0));
        });
        return tcs.Task;
    }

    /// <summary>The network: requests and replies may be lost (the sender retries after a timeout) or delayed.</summary>
    public async Task<RpcResponse> RouteAsync(RpcRequest request, byte[] routeKey, CancellationToken ct)
    {
        var target = World.Leaseholder(routeKey);
        if (target == this)
        {
            return await _replica.HandleAsync(request, ct);
        }

        var deadline = Time.GetUtcNow() + TimeSpan.FromSeconds(20);
        while (Time.GetUtcNow() < deadline)
        {
            if (World.Loop.Random.NextDouble() < World.Loss)
            {
                await Task.Delay(AttemptTimeout, Time, ct); // the request was lost
                continue;
            }

            // Now and then a request is held up for seconds (a network hiccup): it may land after its sender gave
            // up, after the sender's transaction expired, after status recovery looked for it.
            var stall = World.Loop.Random.NextDouble() < World.Loss / 3 ? TimeSpan.FromMilliseconds(World.Loop.Random.Next(500, 8000)) : TimeSpan.Zero;
            await Task.Delay(World.NetworkDelay() + stall, Time, ct);
            var response = await target._replica.HandleAsync(request, ct);
            if (World.Loop.Random.NextDouble() < World.Loss)
            {
                if (World.Loop.Random.NextDouble() < 0.3)
                {
                    // The connection broke with the answer in flight and the sender's deadline passed: it ran, and
                    // the sender must not assume it did not.
                    throw new TimeoutException($"lost the answer of server {target.Id}");
                }

                await Task.Delay(AttemptTimeout, Time, ct); // the reply was lost: try again (it ran once already)
                continue;
            }

            await Task.Delay(World.NetworkDelay(), Time, ct);
            return response;
        }

        throw new TimeoutException($"no answer from server {target.Id} within 20 s");
    }

    public RangeInfo Info(RangeStateMachine sm) => new() { RangeId = sm.RangeId, StartKey = sm.Descriptor!.StartKey, EndKey = sm.Descriptor.EndKey, Leaseholder = Id };

    public TxnRecord? RecordOf(byte[] anchor, Guid id)
    {
        var (sm, _) = Locate(anchor);
        return sm is null ? null : TxnReplica.ReadRecord(sm, TxnKeys.Record(anchor, id));
    }

    public List<Guid> IntentsOn(IEnumerable<byte[]> keys)
    {
        var found = new List<Guid>();
        foreach (var k in keys)
        {
            var (sm, _) = Locate(k);
            if (sm?.Mvcc.GetIntent(k) is { } intent)
            {
                found.Add(intent.TxnId);
            }
        }

        return found;
    }
}

/// <summary>Virtual time over the SimLoop (microseconds), as a TimeProvider (Task.Delay, timers).</summary>
internal sealed class SimTime(SimLoop loop) : TimeProvider
{
    private static readonly DateTimeOffset Epoch = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);

    public override DateTimeOffset GetUtcNow() => Epoch.AddTicks(loop.Now * 10);

    public override long TimestampFrequency => 1_000_000;

    public override long GetTimestamp() => loop.Now;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) => new SimTimer(loop, callback, state, dueTime, period);

    private sealed class SimTimer : ITimer
    {
        private readonly SimLoop _loop;
        private readonly TimerCallback _callback;
        private readonly object? _state;
        private long _generation;

        public SimTimer(SimLoop loop, TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            _loop = loop;
            _callback = callback;
            _state = state;
            Change(dueTime, period);
        }

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            var generation = ++_generation;
            if (dueTime == Timeout.InfiniteTimeSpan)
            {
                return true;
            }

            Schedule(generation, dueTime, period);
            return true;
        }

        public void Dispose() => _generation++;

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }

        private void Schedule(long generation, TimeSpan due, TimeSpan period)
        {
            _loop.After((long)Math.Max(0, due.TotalMicroseconds), () =>
            {
                if (generation != _generation)
                {
                    return;
                }

                _callback(_state);
                if (period != Timeout.InfiniteTimeSpan && period > TimeSpan.Zero && generation == _generation)
                {
                    Schedule(generation, period, period);
                }
            });
        }
    }
}

/// <summary>A clock offset from the simulated time (a server's physical clock).</summary>
internal sealed class OffsetTime(TimeProvider inner, TimeSpan offset) : TimeProvider
{
    public override DateTimeOffset GetUtcNow() => inner.GetUtcNow() + offset;

    public override long TimestampFrequency => inner.TimestampFrequency;

    public override long GetTimestamp() => inner.GetTimestamp();
}

/// <summary>Runs every continuation of the simulation on the SimLoop (one thread, in event order).</summary>
internal sealed class SimContext(SimLoop loop) : SynchronizationContext
{
    private readonly int _thread = Environment.CurrentManagedThreadId;

    public Exception? Failure { get; private set; }

    public override void Post(SendOrPostCallback d, object? state)
    {
        if (Environment.CurrentManagedThreadId != _thread)
        {
            // Something ran on another thread (a continuation that escaped to the thread pool): not deterministic.
            Failure ??= new InvalidOperationException("a continuation escaped the simulation's thread: " + d.Method + " at " + Environment.StackTrace);
            return;
        }

        loop.After(0, () => Invoke(d, state));
    }

    public override void Send(SendOrPostCallback d, object? state) => Invoke(d, state);

    public override SynchronizationContext CreateCopy() => this;

    private void Invoke(SendOrPostCallback d, object? state)
    {
        try
        {
            d(state);
        }
        catch (Exception e)
        {
            Failure ??= e;
        }
    }
}
