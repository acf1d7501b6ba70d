// RaftHost: the real-world driver of one server's RaftScheduler
// =============================================================
//
// The scheduler is deterministic and single-threaded; this class gives it real time, a real disk and real sockets:
//
//   transport threads ──decode──▶ ┐
//   API callers (ProposeAsync) ──▶ ├─▶ event queue (bounded) ──▶ raft loop thread ──▶ RaftScheduler
//   log writer thread (durable) ──▶ ┘                              │  ticks every TickInterval
//                                                                  ├─▶ log writer thread: Write(batch, sync) on RocksDB
//                                                                  └─▶ PeerTransport.TrySend (one frame per peer per round)
//
// - One raft loop thread owns the scheduler: every call into it happens there, in event order.
// - One log writer thread makes each submitted batch durable (one fsync covers every group that was ready
//   together) and then posts the completion back to the loop, which releases the acknowledgements.
// - Ticks are taken by the loop itself between events (no timer thread); a loop that falls behind does not
//   replay missed ticks in a burst, it resumes the cadence.
// - The event queue is bounded (EventQueueCapacity, sized for a few hundred milliseconds of peak load on this
//   machine): incoming Raft frames are dropped when it is full (Raft retransmits), proposals are refused with
//   Overloaded (backpressure to the caller), write completions always get in (they must not be lost).
// - Proposals complete when their entry is applied here: Committed if the entry at (index, term) applied,
//   Dropped if another entry took that index (ours can never commit: safe to retry), Ambiguous if the state
//   moved past the index without us seeing it (a snapshot), NotLeader (with a hint) if refused at once.
//
// Failure cases: a crash of the process loses only writes that were not yet synced, and nothing that was
// acknowledged depends on them (the scheduler releases acknowledgements after the sync). A frame that fails to
// decode is logged and dropped; the sender is not trusted beyond the transport's handshake.
namespace Canopy.Host;

using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using Canopy.Replication.MultiRaft;
using Canopy.Replication.Raft;
using Canopy.Storage;
using Canopy.Transport;

/// <summary>Configuration of a <see cref="RaftHost"/>.</summary>
public sealed record RaftHostOptions
{
    public required ulong ServerId { get; init; }

    public required IPEndPoint ListenEndPoint { get; init; }

    /// <summary>Every other server's id and address.</summary>
    public IReadOnlyDictionary<ulong, EndPoint> Peers { get; init; } = new Dictionary<ulong, EndPoint>();

    /// <summary>RocksDB directory; null for an in-memory engine (tests and benchmarks only).</summary>
    public string? StoreDirectory { get; init; }

    public string ClusterSecret { get; init; } = "canopy-dev-cluster";

    public TimeSpan TickInterval { get; init; } = TimeSpan.FromMilliseconds(50);

    public SchedulerOptions Scheduler { get; init; } = new();

    /// <summary>Bounded event queue; see the file header.</summary>
    public int EventQueueCapacity { get; init; } = 65_536;

    public Action<string>? Log { get; init; }

    /// <summary>Clients (not servers) connecting to the listen port are handed here (see PeerTransport).</summary>
    public ClientConnectionHandler? OnClientConnection { get; init; }

    /// <summary>
    /// Benchmarks only: one-way delay added to every Raft frame this server sends to another server
    /// (<see cref="PeerTransportOptions.InjectedDelay"/>). Zero in production.
    /// </summary>
    public TimeSpan InjectedDelay { get; init; }
}

/// <summary>Outcome of <see cref="RaftHost.ProposeAsync"/>.</summary>
public enum ProposeOutcomeStatus
{
    /// <summary>Applied at the index and term the leader gave it.</summary>
    Committed,

    /// <summary>This server does not lead the group; <see cref="ProposeOutcome.LeaderHint"/> may name who does.</summary>
    NotLeader,

    /// <summary>Refused: a leadership transfer is in progress. Retry.</summary>
    TransferInProgress,

    /// <summary>Another entry took its index: it will never commit. Safe to retry.</summary>
    Dropped,

    /// <summary>It may or may not have committed (the replica moved past it via a snapshot, or the host stopped).</summary>
    Ambiguous,

    /// <summary>The host's queue is full. Retry later.</summary>
    Overloaded,
}

/// <summary>Result of a proposal.</summary>
public readonly record struct ProposeOutcome(ProposeOutcomeStatus Status, ulong Index, ulong Term, ulong LeaderHint);

/// <summary>What one replica looks like (for status pages, tests and benchmarks).</summary>
public sealed record ReplicaStatus(ulong Group, RaftRole Role, ulong Term, ulong Leader, ulong Commit, ulong Applied, ulong LastIndex, bool Quiesced, ulong[] Voters, ulong[] Learners);

/// <summary>Drives one server's <see cref="RaftScheduler"/> with a loop thread, a log-writer thread, RocksDB and TCP.</summary>
public sealed class RaftHost : IAsyncDisposable, ILogWriter, IRaftTransport
{
    /// <summary>Frame kind of a batch of Raft messages on the peer transport.</summary>
    public const byte RaftFrameKind = 1;

    private readonly RaftHostOptions _options;
    private readonly IStorageEngine _engine;
    private readonly RaftScheduler _scheduler;
    private readonly PeerTransport _transport;
    private readonly HandoffQueue<Action> _events;
    private readonly HandoffQueue<WriteBatch> _writes = new(int.MaxValue);
    private readonly Dictionary<ulong, SortedList<ulong, (ulong Term, TaskCompletionSource<ProposeOutcome> Tcs)>> _pending = [];
    private readonly Thread _loop;
    private readonly Thread _writer;
    private readonly CancellationTokenSource _stop = new();
    private readonly Action<string> _log;
    private long _framesDropped;
    private long _decodeErrors;
    private long _syncs;
    private long _syncTicks;

    private RaftHost(RaftHostOptions options, IStorageEngine engine, IStateMachineFactory factory)
    {
        _options = options;
        _engine = engine;
        _log = options.Log ?? (_ => { });
        _events = new HandoffQueue<Action>(options.EventQueueCapacity);
        _scheduler = new RaftScheduler(options.ServerId, engine, this, this, factory, options.Scheduler, (int)options.ServerId)
        {
            OnApplied = OnApplied,
        };
        _scheduler.Load();
        foreach (var id in options.Peers.Keys)
        {
            _scheduler.AddPeer(id);
        }

        _transport = new PeerTransport(
            options.ServerId,
            options.ListenEndPoint,
            new PeerTransportOptions { ClusterSecret = options.ClusterSecret, InjectedDelay = options.InjectedDelay },
            OnFrame,
            log: msg => _log($"transport: {msg}"),
            onClientConnection: options.OnClientConnection);
        foreach (var (id, ep) in options.Peers)
        {
            _transport.SetPeerAddress(id, ep);
        }

        _loop = new Thread(RunLoop) { IsBackground = true, Name = $"raft-loop-{options.ServerId}" };
        _writer = new Thread(RunWriter) { IsBackground = true, Name = $"raft-writer-{options.ServerId}" };
        _loop.Start();
        _writer.Start();
    }

    public ulong ServerId => _options.ServerId;

    /// <summary>The bound peer-transport endpoint.</summary>
    public IPEndPoint ListenEndPoint => _transport.LocalEndPoint;

    public IStorageEngine Engine => _engine;

    /// <summary>(frames dropped because the queue was full, frames that failed to decode, syncs, mean sync ms).</summary>
    public (long FramesDropped, long DecodeErrors, long Syncs, double MeanSyncMs) Counters
    {
        get
        {
            var syncs = Interlocked.Read(ref _syncs);
            var ticks = Interlocked.Read(ref _syncTicks);
            return (Interlocked.Read(ref _framesDropped), Interlocked.Read(ref _decodeErrors), syncs, syncs == 0 ? 0 : ticks * 1000.0 / Stopwatch.Frequency / syncs);
        }
    }

    public TransportCounters TransportCounters => _transport.Counters;

    /// <summary>Opens the store (RocksDB, or memory if no directory) and starts the threads and the listener.</summary>
    public static RaftHost Start(RaftHostOptions options, IStateMachineFactory factory) =>
        Start(options, factory, options.StoreDirectory is { } dir ? RocksDbEngine.Open(dir) : new MemoryEngine());

    /// <summary>Starts on an engine the caller opened; the host owns (and disposes) it from here on.</summary>
    public static RaftHost Start(RaftHostOptions options, IStateMachineFactory factory, IStorageEngine engine)
    {
        try
        {
            return new RaftHost(options, engine, factory);
        }
        catch
        {
            engine.Dispose();
            throw;
        }
    }

    /// <summary>Runs <paramref name="fn"/> on the raft loop (the only thread that may touch the scheduler).</summary>
    public Task<T> InvokeAsync<T>(Func<RaftScheduler, T> fn)
    {
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!TryPost(() =>
        {
            try
            {
                tcs.SetResult(fn(_scheduler));
                _scheduler.ProcessReady();
            }
            catch (Exception ex)
            {
                tcs.SetException(ex);
            }
        }))
        {
            tcs.SetException(new InvalidOperationException("raft host is overloaded or stopped"));
        }

        return tcs.Task;
    }

    /// <summary>Creates the group on this server if it does not exist yet (a new cluster's static bootstrap).</summary>
    public Task<bool> BootstrapIfMissingAsync(ulong group, ConfState conf, ReadOnlyMemory<byte> initialState = default) => InvokeAsync(s =>
    {
        if (s.Node(group) is not null)
        {
            return false;
        }

        s.Bootstrap(group, conf, initialState);
        return true;
    });

    /// <summary>True if the peer transport currently has a connection to <paramref name="server"/>.</summary>
    public bool IsConnected(ulong server) => _transport.IsConnected(server);

    /// <summary>Proposes a command to <paramref name="group"/>; completes when it is applied here (see the file header).</summary>
    public Task<ProposeOutcome> ProposeAsync(ulong group, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        var tcs = new TaskCompletionSource<ProposeOutcome>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!TryPost(() => Propose(group, data, tcs)))
        {
            tcs.TrySetResult(new ProposeOutcome(ProposeOutcomeStatus.Overloaded, 0, 0, 0));
        }

        if (cancellationToken.CanBeCanceled)
        {
            var reg = cancellationToken.Register(() => tcs.TrySetCanceled(cancellationToken));
            tcs.Task.ContinueWith(_ => reg.Dispose(), TaskScheduler.Default);
        }

        return tcs.Task;
    }

    /// <summary>Every replica on this server.</summary>
    public Task<ReplicaStatus[]> StatusAsync() => InvokeAsync(s => s.Groups.Select(g =>
    {
        var n = s.Node(g)!;
        return new ReplicaStatus(g, n.Role, n.Term, n.Leader, n.Committed, n.Applied, n.LastIndex, n.IsQuiesced, n.Conf.Voters, n.Conf.Learners);
    }).ToArray());

    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }

        _stop.Cancel();
        _events.CompleteAdding();
        _loop.Join();
        _writes.CompleteAdding();
        _writer.Join();
        await _transport.DisposeAsync();
        foreach (var list in _pending.Values)
        {
            foreach (var (_, p) in list)
            {
                p.Tcs.TrySetResult(new ProposeOutcome(ProposeOutcomeStatus.Ambiguous, 0, p.Term, 0));
            }
        }

        _engine.Dispose();
        _stop.Dispose();
        _events.Dispose();
        _writes.Dispose();
    }

    // ---------------------------------------------------------------- loop

    private bool TryPost(Action action) => _events.TryAdd(action);

    private void RunLoop()
    {
        var interval = Stopwatch.Frequency * _options.TickInterval.Ticks / TimeSpan.TicksPerSecond;
        var nextTick = Stopwatch.GetTimestamp() + interval;
        while (!_events.IsCompleted)
        {
            var now = Stopwatch.GetTimestamp();
            if (now >= nextTick)
            {
                Run(_scheduler.Tick);
                nextTick = now - nextTick > interval ? now + interval : nextTick + interval;
                continue;
            }

            var wait = (int)Math.Max(1, (nextTick - now) * 1000 / Stopwatch.Frequency);
            try
            {
                if (_events.TryTake(out var ev, wait))
                {
                    Run(ev);

                    // Drain what else is queued before the scheduler assembles the next round.
                    var drained = 0;
                    while (drained++ < 1024 && _events.TryTake(out ev))
                    {
                        Run(ev);
                    }

                    Run(_scheduler.ProcessReady);
                }
            }
            catch (InvalidOperationException) when (_events.IsAddingCompleted)
            {
                break;
            }
        }
    }

    private void Run(Action action)
    {
        try
        {
            action();
        }
        catch (RaftInvariantException ex)
        {
            // A broken Raft invariant means this process must not go on serving: crash loudly.
            _log($"FATAL: {ex.Message}");
            Environment.FailFast($"canopy: raft invariant broken: {ex.Message}", ex);
        }
        catch (Exception ex) when (ex is FormatException or CanopyStorageException)
        {
            _log($"FATAL: {ex.Message}");
            Environment.FailFast($"canopy: {ex.Message}", ex);
        }
    }

    private void Propose(ulong group, ReadOnlyMemory<byte> data, TaskCompletionSource<ProposeOutcome> tcs)
    {
        var res = _scheduler.Propose(group, data);
        switch (res.Status)
        {
            case ProposeStatus.Ok:
                if (!_pending.TryGetValue(group, out var list))
                {
                    list = [];
                    _pending[group] = list;
                }

                list[res.Index] = (res.Term, tcs);
                break;
            case ProposeStatus.TransferInProgress:
                tcs.TrySetResult(new ProposeOutcome(ProposeOutcomeStatus.TransferInProgress, 0, res.Term, res.LeaderHint));
                break;
            default:
                tcs.TrySetResult(new ProposeOutcome(ProposeOutcomeStatus.NotLeader, 0, res.Term, res.LeaderHint));
                break;
        }
    }

    private void OnApplied(ulong group, Entry entry)
    {
        if (!_pending.TryGetValue(group, out var list))
        {
            return;
        }

        while (list.Count > 0 && list.Keys[0] <= entry.Index)
        {
            var index = list.Keys[0];
            var (term, tcs) = list.Values[0];
            list.RemoveAt(0);
            var status = index < entry.Index ? ProposeOutcomeStatus.Ambiguous
                : term == entry.Term ? ProposeOutcomeStatus.Committed
                : ProposeOutcomeStatus.Dropped;
            tcs.TrySetResult(new ProposeOutcome(status, index, term, 0));
        }
    }

    // ---------------------------------------------------------------- log writer

    void ILogWriter.Submit(WriteBatch batch)
    {
        if (!_writes.ForceAdd(batch))
        {
            throw new InvalidOperationException("raft host is stopped"); // as BlockingCollection.Add did
        }
    }

    private void RunWriter()
    {
        while (_writes.TryTake(out var batch, Timeout.Infinite))
        {
            var start = Stopwatch.GetTimestamp();
            try
            {
                _engine.Write(batch, sync: true);
            }
            catch (Exception ex)
            {
                // Without a durable log we must not acknowledge anything: stop the process.
                _log($"FATAL: log write failed: {ex.Message}");
                Environment.FailFast($"canopy: log write failed: {ex.Message}", ex);
            }

            Interlocked.Increment(ref _syncs);
            Interlocked.Add(ref _syncTicks, Stopwatch.GetTimestamp() - start);

            // The completion must reach the loop: it gets in even when the queue is full.
            if (!_events.ForceAdd(() => _scheduler.OnWriteDurable()))
            {
                return; // stopping
            }
        }
    }

    // ---------------------------------------------------------------- transport

    void IRaftTransport.Send(ulong server, IReadOnlyList<Message> messages)
    {
        var payload = MessageCodec.Encode(messages);
        _transport.TrySend(server, RaftFrameKind, payload);
    }

    private void OnFrame(ulong from, byte kind, byte[] payload)
    {
        if (kind != RaftFrameKind)
        {
            return;
        }

        Message[] messages;
        try
        {
            messages = MessageCodec.Decode(payload);
        }
        catch (FormatException ex)
        {
            Interlocked.Increment(ref _decodeErrors);
            _log($"dropping a malformed raft frame from server {from}: {ex.Message}");
            return;
        }

        if (!TryPost(() => _scheduler.Receive(from, messages)))
        {
            Interlocked.Increment(ref _framesDropped);
        }
    }
}

/// <summary>
/// The hand-off between threads of a <see cref="RaftHost"/>: many producers, one consumer that blocks without
/// spinning. (BlockingCollection's SemaphoreSlim spins and calls sched_yield before each wait: with tens of thousands
/// of hand-offs per second on two cores, a quarter of the CPU samples of `canopy bench raft --scenario multi`.)
/// <see cref="TryAdd"/> honours the capacity, <see cref="ForceAdd"/> does not; both fail once adding is completed, and
/// an item added before <see cref="CompleteAdding"/> is always taken (the consumer drains before it sees the end).
/// </summary>
internal sealed class HandoffQueue<T>(int capacity) : IDisposable
{
    private readonly ConcurrentQueue<T> _queue = new();
    private readonly ManualResetEventSlim _signal = new(false, spinCount: 0);
    private readonly Lock _addLock = new();
    private int _count;
    private volatile bool _completed;

    public bool IsAddingCompleted => _completed;

    /// <summary>Adding is completed and every item has been taken.</summary>
    public bool IsCompleted => _completed && _queue.IsEmpty;

    /// <summary>Adds unless the queue holds <c>capacity</c> items or adding is completed.</summary>
    public bool TryAdd(T item) => Add(item, bounded: true);

    /// <summary>Adds even if the queue is full; fails only once adding is completed.</summary>
    public bool ForceAdd(T item) => Add(item, bounded: false);

    public void CompleteAdding()
    {
        lock (_addLock)
        {
            _completed = true;
        }

        _signal.Set();
    }

    /// <summary>
    /// Takes the oldest item, waiting up to <paramref name="timeoutMs"/> (<see cref="Timeout.Infinite"/>: no limit).
    /// False on timeout, or when adding is completed and the queue is empty. One consumer thread only.
    /// </summary>
    public bool TryTake(out T item, int timeoutMs = 0)
    {
        if (TryDequeue(out item))
        {
            return true;
        }

        var deadline = timeoutMs == Timeout.Infinite ? long.MaxValue : Environment.TickCount64 + timeoutMs;
        while (true)
        {
            if (_completed)
            {
                return TryDequeue(out item);
            }

            var remaining = deadline == long.MaxValue ? Timeout.Infinite : (int)Math.Max(0, deadline - Environment.TickCount64);
            if (remaining == 0)
            {
                return false;
            }

            // Reset, then look again: an item added after the look but before the wait has set the signal anew.
            _signal.Reset();
            if (TryDequeue(out item))
            {
                return true;
            }

            _signal.Wait(remaining);
            if (TryDequeue(out item))
            {
                return true;
            }
        }
    }

    public void Dispose() => _signal.Dispose();

    private bool Add(T item, bool bounded)
    {
        lock (_addLock)
        {
            if (_completed || (bounded && _count >= capacity))
            {
                return false;
            }

            Interlocked.Increment(ref _count);
            _queue.Enqueue(item);
        }

        try
        {
            _signal.Set();
        }
        catch (ObjectDisposedException)
        {
            // Disposed after this item got in: the consumer drained and stopped before that, nobody waits.
        }

        return true;
    }

    private bool TryDequeue(out T item)
    {
        if (_queue.TryDequeue(out item!))
        {
            Interlocked.Decrement(ref _count);
            return true;
        }

        return false;
    }
}
